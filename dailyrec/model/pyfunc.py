"""The model registered in MLflow: a pyfunc that returns the top-N items for user ids.

Logged by dailyrec.ops.tracking as "models from code" (this file, no pickle), with the models/ bundle as
its artifact `bundle` and the dailyrec package in its code path.

    model = mlflow.pyfunc.load_model("models:/dailyrec-als@published")
    model.predict(pd.DataFrame({"user_id": ["42", "7"]}), params={"n": 10})
    # -> columns user_id, rank, item_id, score, source ("personalized" or "fallback")

predict also accepts a list of ids or a Series. Items the user already has are left out.
"""

from __future__ import annotations

import mlflow
import pandas as pd


class TopNRecommender(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from threadpoolctl import threadpool_limits

        from dailyrec.model.artifacts import load

        with threadpool_limits(1, "blas"):  # implicit warns about a threaded BLAS when loading
            self.bundle = load(context.artifacts["bundle"])

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        from dailyrec.model.recommender import top_n

        if isinstance(model_input, pd.DataFrame):
            if "user_id" not in model_input.columns:
                raise ValueError("model input needs a user_id column")
            users = model_input["user_id"]
        else:
            users = pd.Series(list(model_input))
        n = int((params or {}).get("n", 20))
        return top_n(self.bundle, users.astype(str).to_numpy(), n=n)


mlflow.models.set_model(TopNRecommender())
