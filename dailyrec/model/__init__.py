"""The model: the confidence matrix (confidence), the ALS fit (als), the saved artifacts
(artifacts), the one recommender interface that evaluate, publish and the MLflow pyfunc use
(recommender), ranking metrics (ranking), training (training) and evaluation (evaluation)."""
