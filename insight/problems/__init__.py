"""Problems and their graders: datasets (generated arithmetic/Countdown, local files) and
the verifiers that turn a completion into a reward without ever executing it."""
