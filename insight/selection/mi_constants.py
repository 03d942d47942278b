"""Constants shared by the numpy and the compiled I_k kernels (one source, so the two
implementations of the same recurrences cannot drift apart). The math is in mi.py."""

G_SERIES_MIN = 10.0  # the asymptotic series of g is used at and above this argument
BLOCK = 32           # factors per block of the C_n product
RESCALE_AT = 1e250   # unnormalized Beta-Binomial weights are rescaled past this

# Bernoulli coefficients of g(x) = log x - psi(x) = 1/(2x) + sum_j B_2j / (2j x^2j)
C1, C2, C3, C4 = 1.0 / 12.0, -1.0 / 120.0, 1.0 / 252.0, -1.0 / 240.0
C5, C6, C7 = 1.0 / 132.0, -691.0 / 32760.0, 1.0 / 12.0
