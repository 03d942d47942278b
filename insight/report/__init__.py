"""Reading a run and the selectors back: the audit ("why was this prompt picked?"), plots,
benchmark analysis, scoring posteriors from elsewhere, and the learning-dynamics simulator.
Everything here reads the published record; nothing here writes it."""
