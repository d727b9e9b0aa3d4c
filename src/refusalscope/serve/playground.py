"""`Playground`: the model, SAEs, discovered latents, cards and refusal direction the web
page explores, and the work it asks of them.

It holds no web code: `app.create_app` maps HTTP routes onto these methods, and the methods
that run the model are written as jobs for the single `ModelWorker`. Keeping the two
apart lets the API tests and the benchmark drive the same code the browser does.

The page's steering form (`schemas.SteeringForm`) becomes an ordinary `Steering`
(`build`), and a spec file becomes the form again (`form_of`), so a spec saved from the
page runs unchanged with `refusalscope steer --spec`, and one written by the CLI opens in
the page when it uses only what the page can show.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..errors import RefusalScopeError
from .schemas import MAX_PROMPT_TOKENS, GateForm, LatentControl, SteeringForm
from .specs import SpecFolder
from .worker import Job

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models.chat import ChatModel
    from ..steering import Intervention
    from ..types import Mode


@dataclass
class Latent:
    """A discovered latent as the page lists it."""

    layer: int
    latent: int
    rank: int | None
    score: float | None
    scores: dict
    peak: float | None  # largest per-prompt activation on harmful prompts (from its card), a slider scale


class TextStream:
    """Turns reply tokens into text deltas (decoding the whole reply each time, so a
    character split over tokens is sent once complete, never as a replacement glyph)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, send: Callable[..., None]):
        self.tokenizer = tokenizer
        self.send = send
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, token: int) -> None:
        self.ids.append(token)
        text = cast(str, self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if text.endswith("\ufffd"):
            return
        if text.startswith(self.shown):
            if len(text) > len(self.shown):
                self.send(text[len(self.shown) :])
        else:  # the tokenizer re-spaced earlier text: resend the whole reply
            self.send(text, replace=True)
        self.shown = text


class Playground:
    """Everything the playground page reads or runs, around one loaded model."""

    def __init__(
        self,
        chat: ChatModel,
        saes: dict[int, Any],
        *,
        features=None,
        cards: Sequence[Any] | None = None,
        direction: torch.Tensor | None = None,
        direction_layer: int | None = None,
        spec_dir: str | Path = "specs",
        judge=None,
        source: dict | None = None,
        peaks: dict[tuple[int, int], float] | None = None,
    ):
        self.chat = chat
        self.saes = {int(layer): sae for layer, sae in saes.items()}
        for sae in self.saes.values():
            sae.check_model(chat)
        self.features = features
        self.cards = {}
        for card in cards or []:
            data = asdict(card) if is_dataclass(card) and not isinstance(card, type) else dict(card)
            self.cards[(int(data["layer"]), int(data["feature"]))] = data
        if (direction is None) != (direction_layer is None):
            raise RefusalScopeError("a refusal direction needs its layer (and a layer needs a direction)")
        self.direction = None if direction is None else direction.detach().float().reshape(-1).cpu()
        if self.direction is not None and self.direction.numel() != chat.d_model:
            raise RefusalScopeError(
                f"the refusal direction has {self.direction.numel()} entries, the model's residual stream {chat.d_model}",
                "use the direction computed for this model",
            )
        self.direction_layer = direction_layer
        self.specs = SpecFolder(spec_dir)
        if judge is None:
            from ..judges.substring import SubstringJudge

            judge = SubstringJudge()
        self.judge = judge
        self.source = source or {}
        self.peaks = dict(peaks or {})  # (layer, latent) -> peak activation on harmful prompts, from discovery
        self._plain: OrderedDict[tuple, dict] = OrderedDict()  # unsteered replies, greedy so reusable
        self._token_index: dict[int, list[list[str]]] = {}

    # ------------------------------------------------------------------ what is loaded
    def info(self) -> dict[str, Any]:
        from .. import __version__
        from . import schemas

        return {
            "model": {
                "name": self.chat.info.name,
                "layers": self.chat.n_layers,
                "d_model": self.chat.d_model,
                "dtype": self.chat.info.dtype,
                "sha256": self.chat.info.sha256,
            },
            "saes": [
                {"layer": layer, "d_sae": sae.d_sae, "architecture": sae.cfg.architecture}
                for layer, sae in sorted(self.saes.items())
            ],
            "direction": None if self.direction is None else {"layer": self.direction_layer},
            "features": None if self.features is None else {"method": self.features.method, "k": self.features.k},
            "judge": getattr(self.judge, "name", type(self.judge).__name__),
            "limits": {
                "prompt_chars": schemas.MAX_PROMPT_CHARS,
                "prompt_tokens": MAX_PROMPT_TOKENS,
                "max_new_tokens": schemas.MAX_NEW_TOKENS,
                "latents": schemas.MAX_LATENTS,
                "curve_prompts": schemas.MAX_CURVE_PROMPTS,
                "curve_strengths": schemas.MAX_CURVE_STRENGTHS,
            },
            "source": self.source,
            "version": __version__,
        }

    def latents(self) -> list[dict[str, Any]]:
        """The discovered latents, best first, with every method's score."""
        if self.features is None:
            return []
        out = []
        for f in self.features.features:
            card = self.cards.get((f.layer, f.feature))
            peak = (
                max(card["max_harmful"]) if card and card.get("max_harmful") else self.peaks.get((f.layer, f.feature))
            )
            out.append(asdict(Latent(f.layer, f.feature, f.rank, f.score, dict(f.scores), peak)))
        return out

    def sae(self, layer: int):
        if layer not in self.saes:
            have = ", ".join(str(layer) for layer in sorted(self.saes)) or "none"
            raise RefusalScopeError(f"no SAE is loaded for layer {layer}", f"use one of the loaded layers: {have}")
        return self.saes[layer]

    def check_latent(self, layer: int, latent: int) -> None:
        sae = self.sae(layer)
        if not 0 <= latent < sae.d_sae:
            raise RefusalScopeError(
                f"latent {latent} is out of range for the layer-{layer} SAE (d_sae={sae.d_sae})",
                f"use a latent in [0, {sae.d_sae - 1}]",
            )

    # ------------------------------------------------------------------ search and cards
    def promoted_tokens(self, layer: int, top: int = 5, chunk: int = 256) -> list[list[str]]:
        """The tokens each latent of an SAE promotes most (direct logit effect), computed
        once per layer: the text a search over all latents matches against."""
        if layer not in self._token_index:
            sae = self.sae(layer)
            w = self.chat.unembed.weight.detach().float()
            scale = self.chat.final_norm_gain()
            decode = self.chat.decode
            rows: list[list[str]] = []
            with torch.no_grad():
                for start in range(0, sae.d_sae, chunk):
                    dirs = sae.decoder_directions(list(range(start, min(start + chunk, sae.d_sae)))).float()
                    if scale is not None:
                        dirs = dirs * scale
                    top_ids = (dirs @ w.T).topk(top, dim=-1).indices
                    rows.extend([[decode([int(t)]) for t in ids] for ids in top_ids])
            self._token_index[layer] = rows
        return self._token_index[layer]

    def search(self, query: str, layer: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Latents of the loaded SAEs matching `query`: 'L/i' or 'i' (an index), or text
        found among the tokens a latent promotes."""
        query = query.strip()
        layers = [layer] if layer is not None else sorted(self.saes)
        for one in layers:
            self.sae(one)
        discovered = {(d["layer"], d["latent"]): d for d in self.latents()}
        hits: list[tuple[int, int]] = []
        if "/" in query and all(part.strip().isdigit() for part in query.split("/", 1)):
            a, b = (int(part) for part in query.split("/", 1))
            if a in layers and 0 <= b < self.saes[a].d_sae:
                hits.append((a, b))
        elif query.isdigit():
            hits = [(one, int(query)) for one in layers if int(query) < self.saes[one].d_sae]
        elif query:
            needle = query.lower()
            for one in layers:
                for i, tokens in enumerate(self.promoted_tokens(one)):
                    if any(needle in t.lower() for t in tokens):
                        hits.append((one, i))
                        if len(hits) >= limit:
                            break
        out = []
        for one, i in hits[:limit]:
            known = discovered.get((one, i))
            promotes = self.promoted_tokens(one)[i] if self._token_index.get(one) else None
            out.append(
                {
                    "layer": one,
                    "latent": i,
                    "discovered": known is not None,
                    "score": None if known is None else known["score"],
                    "promotes": promotes,
                }
            )
        return out

    def card(self, layer: int, latent: int) -> dict[str, Any]:
        """The latent's feature card from `discover` (contexts, histograms, logit effect),
        or, for a latent without one, its logit effect computed now."""
        self.check_latent(layer, latent)
        card = self.cards.get((layer, latent))
        ranked = next(
            (f for f in (self.features.features if self.features else []) if (f.layer, f.feature) == (layer, latent)),
            None,
        )
        if card is not None:
            out = {**card, "computed": False}
            if ranked is not None:  # cards written before discovery scores were attached
                out["rank"] = card.get("rank") if card.get("rank") is not None else ranked.rank
                out["scores"] = card.get("scores") or dict(ranked.scores)
            return out
        from ..discovery.cards import logit_effect

        with torch.no_grad():
            promoted, suppressed = logit_effect(self.chat, self.saes[layer].decoder_directions([latent])[0])
        return {
            "layer": layer,
            "feature": latent,
            "rank": None if ranked is None else ranked.rank,
            "scores": {} if ranked is None else dict(ranked.scores),
            "contexts": [],
            "max_harmful": [],
            "max_harmless": [],
            "promoted": promoted,
            "suppressed": suppressed,
            "computed": True,
        }

    # ------------------------------------------------------------------ form <-> Steering
    def _need_direction(self, what: str) -> tuple[torch.Tensor, int]:
        """The refusal direction and its layer (`__init__` accepts both or neither)."""
        if self.direction is None or self.direction_layer is None:
            raise RefusalScopeError(
                f"{what} needs the refusal direction, and none is loaded",
                "serve a run folder that has direction/ (or pass --direction)",
            )
        return self.direction, self.direction_layer

    def build(self, form: SteeringForm):
        """The `Steering` a form describes (checked against the model)."""
        from ..steering import (
            ActAdd,
            Conditional,
            DirectionAblation,
            DirectionGate,
            FeatureGate,
            FeatureSteer,
            Steering,
        )

        groups: dict[tuple[int, Mode], list[LatentControl]] = {}
        for control in form.latents:
            self.check_latent(control.layer, control.latent)
            groups.setdefault((control.layer, control.mode), []).append(control)
        items: list[Intervention] = []
        for (layer, mode), controls in groups.items():
            latents = [c.latent for c in controls]
            if len(set(latents)) != len(latents):
                raise RefusalScopeError(
                    f"latent {layer}/{latents[0]} appears twice with mode '{mode}'", "give each latent one slider"
                )
            items.append(FeatureSteer(self.saes[layer], latents, mode, [c.value for c in controls]))
        if form.ablation:
            items.append(DirectionAblation(self._need_direction("ablation")[0]))
        if form.actadd:
            direction, direction_layer = self._need_direction("ActAdd")
            items.append(ActAdd(direction, direction_layer, form.actadd))
        gate = form.gate
        if gate.enabled and items:
            if gate.kind == "feature":
                if gate.layer is None or gate.latent is None:
                    raise RefusalScopeError("a feature gate needs its layer and latent", "pick the gate's latent")
                self.check_latent(gate.layer, gate.latent)
                reader: FeatureGate | DirectionGate = FeatureGate(self.saes[gate.layer], gate.latent)
            else:
                direction, direction_layer = self._need_direction("a direction gate")
                layer = (
                    gate.layer
                    if gate.layer is not None
                    else min(
                        [c.layer for c in form.latents] + ([direction_layer] if form.actadd else []),
                        default=direction_layer,
                    )
                )
                if not 0 <= layer < self.chat.n_layers:
                    raise RefusalScopeError(
                        f"gate layer {layer} is not a layer of the model",
                        f"use a layer in [0, {self.chat.n_layers - 1}]",
                    )
                reader = DirectionGate(direction, layer)
            items = [Conditional(items, reader, gate.threshold)]
        steering = Steering(items, name="playground")
        steering.check(self.chat)
        steering.for_model(self.chat)
        return steering

    def form_of(self, steering) -> SteeringForm:
        """The page's form for a steering; a clear error for what the page cannot show."""
        from ..steering import ActAdd, Conditional, DirectionAblation, DirectionGate, FeatureGate, FeatureSteer

        def same_direction(vec) -> bool:
            return (
                self.direction is not None
                and vec.numel() == self.direction.numel()
                and bool(torch.allclose(vec.float().reshape(-1), self.direction, rtol=1e-5, atol=1e-6))
            )

        form = SteeringForm()
        items = list(steering.interventions)
        if len(items) == 1 and isinstance(items[0], Conditional):
            cond = items[0]
            if isinstance(cond.gate, FeatureGate):
                form.gate = GateForm(
                    enabled=True,
                    kind="feature",
                    threshold=cond.threshold,
                    layer=int(cond.gate.layer),
                    latent=cond.gate.feature,
                )
            elif isinstance(cond.gate, DirectionGate) and same_direction(cond.gate.direction) and cond.gate.normalize:
                form.gate = GateForm(
                    enabled=True, kind="direction", threshold=cond.threshold, layer=int(cond.gate.layer)
                )
            else:
                raise RefusalScopeError(
                    "this spec's gate is not one the playground can show",
                    "the page shows feature gates and refusal-direction gates",
                )
            if cond.reduce != "max" or cond.positions != "prompt" or not cond.skip_first:
                raise RefusalScopeError(
                    "this spec's gate reads other positions than the page's (max over the prompt)",
                    "run it with `refusalscope steer --spec`",
                )
            items = cond.interventions
        for item in items:
            if isinstance(item, FeatureSteer) and item.positions == "all" and item.keep_error:
                for latent, value in zip(item.features, item.values):
                    form.latents.append(
                        LatentControl(layer=int(item.layer), latent=latent, mode=item.mode, value=value)
                    )
                if int(item.layer) not in self.saes or self.saes[int(item.layer)] is not item.sae:
                    from ..steering.references import sae_hash

                    if int(item.layer) not in self.saes or sae_hash(self.saes[int(item.layer)]) != sae_hash(item.sae):
                        raise RefusalScopeError(
                            f"this spec steers an SAE at layer {item.layer} that is not loaded here"
                        )
            elif (
                isinstance(item, DirectionAblation)
                and same_direction(item.direction)
                and item.layers == "all"
                and item.positions == "all"
            ):
                form.ablation = True
            elif (
                isinstance(item, ActAdd)
                and same_direction(item.direction)
                and item.layer == self.direction_layer
                and not item.normalize
                and item.positions == "all"
            ):
                form.actadd = item.coefficient
            else:
                raise RefusalScopeError(
                    f"the playground cannot show this spec's {item.describe()}",
                    "it shows SAE latents (all positions), and ablation/ActAdd of the loaded refusal direction",
                )
        return form

    def save_spec(self, name: str, form: SteeringForm, description: str = "", overwrite: bool = False) -> dict:
        steering = self.build(form)
        if not steering.interventions:
            raise RefusalScopeError(
                "there is nothing to save: no latent, ablation or ActAdd is set", "move a slider first"
            )
        steering.description = description
        path = self.specs.save(name, steering, overwrite)
        return {"name": path.name, "id": steering.id}

    def load_spec(self, name: str) -> dict:
        """A saved spec as the page's form. Its SAEs are matched to the loaded ones by
        content hash; a spec needing any other SAE is refused (nothing else is read)."""
        from ..steering import Steering
        from ..steering.references import sae_hash

        path, data = self.specs.read(name)
        by_hash = {sae_hash(sae): sae for sae in self.saes.values()}
        saes: dict[str, Any] = {}

        def collect(obj) -> None:
            if isinstance(obj, dict):
                if "sha256" in obj and "d_sae" in obj and "source" in obj:
                    sae = by_hash.get(obj["sha256"])
                    if sae is None:
                        raise RefusalScopeError(
                            f"spec {path.name} uses an SAE (layer {obj.get('layer')}, {str(obj['sha256'])[:12]}) "
                            "that the playground has not loaded",
                            "serve the run whose SAEs the spec was written with",
                        )
                    saes[str(obj["source"])] = sae
                for value in obj.values():
                    collect(value)
            elif isinstance(obj, list):
                for value in obj:
                    collect(value)

        collect(data)

        def refuse(source):
            raise RefusalScopeError(f"spec {path.name} names an SAE by '{source}' without its content hash")

        steering = Steering.from_dict(data, base=path.parent, saes=saes, sae_loader=refuse)
        form = self.form_of(steering)
        return {
            "name": path.name,
            "id": steering.id,
            "description": steering.description,
            "steering": form.model_dump(),
        }

    @staticmethod
    def scaled(form: SteeringForm, strength: float) -> SteeringForm:
        """The form at `strength` × its settings (1 = as set): set/add values and the ActAdd
        coefficient are multiplied, scale factors move from 1 towards their value, ablation
        is on for any positive strength. Strength 0 is the unsteered model (no intervention
        at all), the baseline every curve starts from, not latents clamped to 0."""
        if strength == 0:
            return SteeringForm()
        out = form.model_copy(deep=True)
        for c in out.latents:
            c.value = 1 + strength * (c.value - 1) if c.mode == "scale" else strength * c.value
        out.actadd = form.actadd * strength
        out.ablation = form.ablation and strength > 0
        return out

    # ------------------------------------------------------------------ prompts
    def check_prompt(self, prompt: str, system: str | None = None) -> None:
        n = len(self.chat.encode(self.chat.format(prompt, system)))
        if n > MAX_PROMPT_TOKENS:
            raise RefusalScopeError(
                f"the prompt is {n} tokens long; the playground takes at most {MAX_PROMPT_TOKENS}", "shorten it"
            )

    # ------------------------------------------------------------------ model jobs
    def generate_job(
        self, prompt: str, steering, max_new_tokens: int = 64, baseline: bool = True, system: str | None = None
    ) -> Callable[[Job], None]:
        """A worker job streaming the steered reply, then the unsteered one (from a small
        cache when this prompt was answered before: greedy replies do not change)."""

        def run(job: Job) -> None:
            chat = self.chat
            interventions = steering if steering.interventions else None
            for cond in steering.conditionals:
                decided = cond.decisions(chat, [prompt], batch_size=1, system=system)
                job.emit(
                    "gate",
                    fired=bool(decided.fired[0]),
                    score=_finite(float(decided.scores[0])),
                    threshold=cond.threshold,
                )
            job.check()
            self._stream(job, "steered", prompt, max_new_tokens, interventions, system)
            if baseline:
                key = (prompt, system, max_new_tokens)
                cached = self._plain.get(key)
                if cached is not None:
                    self._plain.move_to_end(key)
                    job.emit("token", side="plain", text=cached["text"], replace=True)
                    job.emit("reply", side="plain", **cached, cached=True)
                else:
                    reply = self._stream(job, "plain", prompt, max_new_tokens, None, system)
                    if reply["finish_reason"] != "cancelled":
                        self._plain[key] = reply
                        while len(self._plain) > 128:
                            self._plain.popitem(last=False)

        return run

    def _stream(self, job: Job, side: str, prompt: str, max_new_tokens: int, interventions, system) -> dict:
        def send(text: str, replace: bool = False) -> None:
            job.emit("token", side=side, text=text, replace=replace)

        stream = TextStream(self.chat.tokenizer, send)

        def on_token(index: int, token: int) -> None:
            job.check()
            stream(token)

        started = time.perf_counter()
        gen = self.chat.generate(
            [prompt],
            max_new_tokens=max_new_tokens,
            batch_size=1,
            system=system,
            interventions=interventions,
            progress=False,
            on_token=on_token,
        )
        text = gen.texts[0]
        if text != stream.shown:
            send(text, replace=True)
        reply = {
            "text": text,
            "finish_reason": gen.finish_reasons[0],
            "tokens": len(gen.token_ids[0]),
            "seconds": round(time.perf_counter() - started, 3),
        }
        job.emit("reply", side=side, **reply)
        return reply

    def curve_job(
        self, prompts: list[str], form: SteeringForm, strengths: list[float], max_new_tokens: int = 24
    ) -> Callable[[Job], None]:
        """A worker job: refusal rate (judge, with a bootstrap interval and n) on `prompts`
        at each strength × the current steering, one point per event."""
        from ..stats import rate

        steerings = [(s, self.build(self.scaled(form, s))) for s in strengths]  # errors before queueing

        def run(job: Job) -> None:
            total = len(steerings) * len(prompts)
            done = 0
            for strength, steering in steerings:

                def on_token(index: int, token: int) -> None:
                    job.check()

                job.emit("progress", done=done, total=total, strength=strength)
                gen = self.chat.generate(
                    prompts,
                    max_new_tokens=max_new_tokens,
                    batch_size=len(prompts),
                    interventions=steering if steering.interventions else None,
                    progress=False,
                    on_token=on_token,
                )
                verdicts = self.judge.judge(prompts, gen.texts)
                est = rate([v.refused for v in verdicts])
                done += len(prompts)
                job.emit(
                    "point",
                    strength=strength,
                    rate=est.value,
                    low=est.low,
                    high=est.high,
                    n=est.n,
                    replies=[{"text": t, "refused": v.refused} for t, v in zip(gen.texts, verdicts)],
                )
                job.emit("progress", done=done, total=total, strength=strength)

        return run

    def activations_job(self, prompt: str, layer: int, latent: int) -> Callable[[Job], None]:
        """A worker job: the latent's activation at every token of the formatted prompt."""
        self.check_latent(layer, latent)

        def run(job: Job) -> None:
            chat = self.chat
            ids = chat.encode(chat.format(prompt))
            acts = chat.residual([prompt], [layer], positions="all", batch_size=1, progress=False)[layer][0]
            with torch.no_grad():
                values = self.saes[layer].encode_subset(acts, [latent])[:, 0]
            job.emit("activations", tokens=[chat.decode([t]) for t in ids], values=[round(float(v), 4) for v in values])

        return run


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
