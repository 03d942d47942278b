"""Plug-ins that let other trainers (TRL, verl) run InSight's online prompt selection and
keep InSight's record of the run. `online` is what they share; each plug-in module imports
its trainer lazily, so this package imports without them."""
