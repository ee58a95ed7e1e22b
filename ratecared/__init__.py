"""ratecared: maintenance jobs and platform circuit breakers for RateCare."""

__version__ = "0.1.0"
