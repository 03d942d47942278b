"""The old selector API, kept at its old import path for code written against it.

The implementation lives in the selection package (insight/selection/): ``registry``
(the selectors, ``make_selector``, ``SelectorConfig``), ``configs``, ``selectors`` (the
objects that draw batches) and ``dapo``. New code imports from there.
"""

from insight.selection.configs import (DifficultyConfig, DynamicSamplingConfig,  # noqa: F401
                                       InsightConfig, InsightSampledConfig, MIConfig,
                                       MoPPSConfig, UniformConfig)
from insight.selection.dapo import (DynamicSamplingRound, filter_groups,  # noqa: F401
                                    truncate_kept)
from insight.selection.registry import (SelectorConfig, make_selector,  # noqa: F401
                                        parse_selector_config)
from insight.selection.selectors import (TABLE_SCHEMA, DynamicSamplingSelector,  # noqa: F401
                                         ScoringSelector, Selection, Selector,
                                         UniformSelector, empty_table)
