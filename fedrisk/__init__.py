"""fedrisk: privacy-preserving federated credit-risk and fraud modelling.

The library holds everything that is not Flower: data, preprocessing, models, DP training,
the privacy ledger, metrics from sufficient statistics and MLflow tracking. `clients/` and
`server/` wrap it in Flower apps.
"""

__version__ = "0.1.0"
