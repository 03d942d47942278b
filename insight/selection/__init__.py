"""The selection core: which prompts to roll out next, and the belief behind the choice.

Modules, each doing one thing (import the one you need; this package imports nothing):

* ``validate``    input checks shared by everything below; ``describe`` names offenders
* ``posterior``   the per-prompt Beta posterior and its conjugate update with forgetting
* ``prior``       the empirical-Bayes prior (Beta-Binomial fit) and the view it gives
* ``mi``          exact I_k (dispatch, numpy kernels); ``mi_numba`` the compiled kernels
* ``scores``      difficulty weights and one score function per selector
* ``configs``     the selectors' pydantic configs
* ``selectors``   the objects that draw a batch (scored top-B, epoch-style uniform, DAPO)
* ``dapo``        DAPO's filter-and-truncate rule and the accounting of its refills
* ``registry``    THE declaration of every selector, and the name-based API over it
"""
