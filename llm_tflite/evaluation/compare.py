"""``llm-tflite compare``: convert with several strategies, measure what each costs and buys.

For every strategy: file size (and its ratio to float32), held-out perplexity and nats
per character, KL divergence and top-1 agreement of next-token distributions against the
float32 file, and decode speed relative to float32, measured in the same process in
interleaved rounds (``bench.decode_speeds``). The
results go to ``results.md`` (a table ready for a README), ``results.csv`` and
``results.png`` (size against quality loss, one point per strategy).
"""

from __future__ import annotations

import csv
import dataclasses
import os

from llm_tflite.console import logger
from llm_tflite.errors import LLMTFLiteError

COLUMNS = (
    "strategy", "file_bytes", "size_vs_float32", "perplexity", "perplexity_increase_pct", "nats_per_char",
    "kl_divergence", "top1_agreement", "decode_tokens_per_s", "decode_speed_vs_float32", "error",
)


@dataclasses.dataclass
class StrategyResult:
    strategy: str
    file_bytes: int = 0
    size_vs_float32: float = float("nan")
    perplexity: float = float("nan")
    perplexity_increase_pct: float = float("nan")
    nats_per_char: float = float("nan")
    kl_divergence: float = float("nan")
    top1_agreement: float = float("nan")
    decode_tokens_per_s: float = float("nan")
    decode_speed_vs_float32: float = float("nan")
    error: str = ""


def resolve_strategies(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list -> registered names, float32 (``none``) first.

    Raises ``UnknownStrategyError`` for a name nobody registered, before any conversion.
    """
    from llm_tflite.plugins.registry import get_strategy, strategies

    names = sorted(strategies()) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        get_strategy(name)
    return ["none"] + [n for n in dict.fromkeys(names) if n != "none"]


def compare(model, strategy_names, heldout_text: str, output_dir: str, *, calibration=None, family=None,
            random_weights=False, max_tokens=None, prefill_lengths=None,
            context_length=None) -> list[StrategyResult]:
    """Convert ``model`` with each strategy into ``output_dir`` and evaluate it on ``heldout_text``.

    Args:
        model: preset name, directory, handle or Keras model.
        strategy_names: registered strategy names (``resolve_strategies``); float32 is always measured.
        heldout_text: evaluation text (e.g. the last 10% of tiny Shakespeare).
        output_dir: where ``<strategy>.tflite`` and the reports go.
        calibration: for strategies that calibrate (a path or ``TextCalibration``).
        max_tokens: evaluate only the first N held-out tokens (quicker, noisier).
        context_length: the files' context, which is also the evaluation window (default: the
            converter's, the model's own up to 1,024; a model trained on shorter windows is
            best measured at its training length).

    Returns:
        One ``StrategyResult`` per strategy; a strategy that fails gets its error recorded
        and the others still run.

    Example:
        >>> compare("gpt2_tiny_shakespeare", ["none", "dynamic_int8"], text, "build/compare")  # doctest: +SKIP
    """
    from llm_tflite.evaluation.bench import decode_speeds
    from llm_tflite.export.converter import DEFAULT_PREFILL_LENGTHS, Converter
    from llm_tflite.evaluation.metrics import tflite_heldout_loss
    from llm_tflite.families.loading import load_model
    from llm_tflite.plugins.registry import get_strategy
    from llm_tflite.runtime.runner import InterpreterRunner

    from llm_tflite.litert.flatbuffer import check_writable

    check_writable(output_dir, directory=True)
    os.makedirs(output_dir, exist_ok=True)
    fam, lm = load_model(model, family=family, random_weights=random_weights)  # once for all strategies
    results: list[StrategyResult] = []
    float_path = os.path.join(output_dir, "none.tflite")
    reference = float_result = None
    for name in strategy_names:
        result = StrategyResult(name)
        path = os.path.join(output_dir, f"{name}.tflite")
        try:
            logger.info("[%s] converting", name)
            needs = get_strategy(name).needs_calibration
            Converter(quantize=name, prefill_lengths=prefill_lengths or DEFAULT_PREFILL_LENGTHS,
                      context_length=context_length,
                      calibration=calibration if needs else None).convert(lm, path, family=fam.name)
            result.file_bytes = os.path.getsize(path)
            runner = InterpreterRunner(path)
            logger.info("[%s] evaluating", name)
            loss = tflite_heldout_loss(runner, heldout_text, max_tokens=max_tokens, desc=f"eval {name}",
                                       reference=None if reference is None else reference.logits)
            result.perplexity, result.nats_per_char = loss["perplexity"], loss["nats_per_char"]
            result.kl_divergence = loss.get("kl_divergence", 0.0)
            result.top1_agreement = loss.get("top1_agreement", 1.0)
        except (LLMTFLiteError, ValueError, RuntimeError) as e:
            if name == "none":
                raise
            result.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            logger.warning("[%s] failed: %s", name, result.error)
        if name == "none":
            reference, float_result = InterpreterRunner(float_path), result
        if not result.error:
            result.size_vs_float32 = result.file_bytes / float_result.file_bytes
            result.perplexity_increase_pct = 100 * (result.perplexity / float_result.perplexity - 1)
        results.append(result)
    logger.info("measuring decode speed (interleaved rounds)")
    ok = [r for r in results if not r.error]
    speeds = decode_speeds([os.path.join(output_dir, f"{r.strategy}.tflite") for r in ok])
    for r in ok:
        r.decode_tokens_per_s = speeds[os.path.join(output_dir, f"{r.strategy}.tflite")]
    for r in ok:
        r.decode_speed_vs_float32 = r.decode_tokens_per_s / float_result.decode_tokens_per_s
    return results


def write_reports(results: list[StrategyResult], output_dir: str, title: str = "") -> dict[str, str]:
    """``results.md``, ``results.csv`` and ``results.png`` in ``output_dir``; returns their paths."""
    paths = {ext: os.path.join(output_dir, f"results.{ext}") for ext in ("md", "csv", "png")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow(dataclasses.asdict(r))
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(markdown_table(results, title))
    plot(results, paths["png"], title)
    return paths


def markdown_table(results: list[StrategyResult], title: str = "") -> str:
    lines = [f"**{title}**\n"] if title else []
    lines += [
        "| strategy | size | vs float32 | perplexity | Δ perplexity | nats/char | KL (nats/token) | top-1 agreement | decode speed vs float32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.strategy} | failed: {r.error} | | | | | | | |")
            continue
        lines.append(
            f"| {r.strategy} | {r.file_bytes / 1e6:.2f} MB | {r.size_vs_float32:.3f} | {r.perplexity:.3f} | "
            f"{r.perplexity_increase_pct:+.2f}% | {r.nats_per_char:.4f} | {r.kl_divergence:.2e} | "
            f"{r.top1_agreement:.2%} | {r.decode_speed_vs_float32:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[StrategyResult], path: str, title: str = "") -> None:
    """Size (fraction of float32) against perplexity increase, one labelled point per strategy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise LLMTFLiteError("the plot needs matplotlib: pip install 'llm-tflite[report]'") from e
    ok = [r for r in results if not r.error]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r.size_vs_float32 for r in ok], [r.perplexity_increase_pct for r in ok], s=40, zorder=3)
    for r in ok:
        ax.annotate(r.strategy, (r.size_vs_float32, r.perplexity_increase_pct), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    ax.set_xlabel("file size (fraction of float32)")
    ax.set_ylabel("perplexity increase over float32 (%)")
    ax.set_xlim(0, 1.1)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "quantization: size against quality loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
