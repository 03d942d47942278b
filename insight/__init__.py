"""InSight: RLVR training with online data selection by weighted mutual information.

The core library is framework-free: it never imports Prefect or MLflow. The Prefect
wrappers live in the top-level `tasks` and `flows` packages, which depend on this one.
"""

__version__ = "0.1.0"
