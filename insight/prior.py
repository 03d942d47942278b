"""Old import path of insight.selection.prior, kept so that code written against it (and
branches not yet merged) keeps working: this module *is* insight.selection.prior (same
object in sys.modules, so patches and isinstance checks agree). New code imports from
insight.selection.prior.
"""

import sys

from insight.selection import prior as _module

sys.modules[__name__] = _module
