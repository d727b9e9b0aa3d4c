"""Attack tasks for `refusalscope run`: the static suite, a small GCG budget and the
scripted multi-turn set, each against the unsteered, steered and gated model, written
into the run's results database (or under one folder) that the report's robustness
section reads (`attacks.report`).

Everything resumes: rerunning the pipeline answers only what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..evaluation.grid import GateSpec
    from ..models.chat import ChatModel
    from ..steering.kinds import Intervention
    from .configs import AttackConfig


@dataclass
class AttackTasks:
    """Sizes of the pipeline's attack tasks. The GCG budget is small on purpose: on two
    cores one step with 128 candidates on the default model takes ~30 s."""

    suite_limit: int = 10  # prompts per attack family
    suite_families: tuple[str, ...] = ()  # () = every registered family
    gcg_behaviours: int = 20
    gcg_steps: int = 5
    gcg_candidates: int = 128
    gcg_suffix_length: int = 20
    multiturn: bool = True
    max_new_tokens: int = 48
    seed: int = 0


def run_attack_tasks(
    chat: ChatModel,
    configs,
    root: str | Path,
    tasks: AttackTasks | None = None,
    *,
    data_dir=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the attack tasks for every configuration (`AttackConfig`) into `root`: a
    results database (`.db`: one keyed row per finished item) or a folder
    (`suite/`, `gcg/<config>/`, `multiturn/<config>/`)."""
    from .behaviours import load_behaviours
    from .gcg import GCG, GCGConfig
    from .multiturn import load_conversations, run_scripted
    from .runs import is_store
    from .suite import SuiteSources, build_prompts, run_suite

    tasks = tasks or AttackTasks()
    root = Path(root)
    store = is_store(root)

    def target(kind: str, name: str | None = None) -> Path:
        if store:
            return root
        return root / kind if name is None else root / kind / name

    out: dict[str, Any] = {}
    prompts = build_prompts(
        list(tasks.suite_families) or ["all"], SuiteSources(data_dir, tasks.suite_limit, tasks.seed)
    )
    behaviours = load_behaviours("harmful/harmbench", None, tasks.gcg_behaviours, tasks.seed, data_dir)
    out["suite"] = run_suite(
        chat, configs, prompts, target("suite"), max_new_tokens=tasks.max_new_tokens, progress=progress
    )
    gcg_config = GCGConfig(
        steps=tasks.gcg_steps,
        candidates=tasks.gcg_candidates,
        suffix_length=tasks.gcg_suffix_length,
        check_every=max(1, tasks.gcg_steps),
        seed=tasks.seed,
    )
    out["gcg"] = {}
    for config in configs:
        summary = GCG(chat, config.steering, gcg_config).run(
            behaviours, target("gcg", config.name), progress=progress, name=config.name
        )
        summary.pop("results")
        out["gcg"][config.name] = summary
    if tasks.multiturn:
        convs = load_conversations()
        out["multiturn"] = {}
        for config in configs:
            summary = run_scripted(
                chat,
                config,
                convs,
                target("multiturn", config.name),
                max_new_tokens=tasks.max_new_tokens,
                progress=progress,
            )
            summary.pop("results")
            out["multiturn"][config.name] = summary
    return out


def pipeline_configs(interventions: Sequence[Intervention], gate: GateSpec) -> list[AttackConfig]:
    """The pipeline's three rows: unsteered, the selected latents clamped (`interventions`),
    and the same behind the harm gate (`gate`, an `evaluation.grid.GateSpec`)."""
    from ..steering import Steering
    from .configs import AttackConfig

    steered = list(interventions)
    return [
        AttackConfig("unsteered"),
        AttackConfig("steered", Steering(steered, name="steered")),
        AttackConfig("gated", Steering([gate.wrap(steered)], name="gated")),
    ]


def run_pipeline_attacks(
    chat: ChatModel,
    interventions: Sequence[Intervention],
    gate: GateSpec,
    root: str | Path,
    tasks: AttackTasks,
    *,
    data_dir=None,
    progress: bool = True,
) -> dict[str, Any]:
    """What `refusalscope run` calls when its profile has attack tasks."""
    return run_attack_tasks(
        chat, pipeline_configs(interventions, gate), root, tasks, data_dir=data_dir, progress=progress
    )
