"""The steering playground: a local web page to explore and steer refusal latents.

`refusalscope serve` loads a model with the SAEs, discovered latents, feature cards and
refusal direction of a discovery run and serves one page (plain HTML/JS shipped in the
package) where the steered and the unsteered reply stream side by side. See `app` (HTTP
routes and their safety rules), `playground` (what the routes do), `worker` (the single
model queue) and `specs` (the spec folder). FastAPI and uvicorn come with the `serve` extra.
"""

from .playground import Playground
from .specs import SpecFolder
from .worker import Cancelled, Job, ModelWorker

__all__ = ["Cancelled", "Job", "ModelWorker", "Playground", "SpecFolder", "create_app"]


def create_app(*args, **kwargs):
    """`app.create_app`, imported on use so that the engine never needs FastAPI."""
    from .app import create_app as make

    return make(*args, **kwargs)
