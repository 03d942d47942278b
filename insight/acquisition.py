"""The stable acquisition API, kept at its old import path for code written against it.

The implementation lives in the selection package (insight/selection/): ``mi`` (exact
I_k), ``scores`` (weights, per-selector scores), ``validate`` (input checks) and
``registry`` (the selectors). New code imports from there.
"""

from insight.selection.mi import (NUMBA_MIN_PROMPTS, get_num_threads, mi_naive,  # noqa: F401
                                  mutual_information, numba_available, numba_disabled,
                                  set_num_threads)
from insight.selection.registry import (NAMES as SELECTORS, score,  # noqa: F401
                                        score_components, selector_params)
from insight.selection.scores import (DEFAULT_GAMMA, DEFAULT_SIGMA, DEFAULT_TAU,  # noqa: F401
                                      WEIGHTS, difficulty_factor, difficulty_weight,
                                      evidence_factor)
from insight.selection.validate import (MI_MAX_PARAM, MI_MIN_PARAM,  # noqa: F401
                                        as_float_array, check_lengths,
                                        check_supported_range, describe,
                                        validate_alpha_beta, validate_k)
