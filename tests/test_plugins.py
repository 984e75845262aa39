"""The plugin registry: built-ins, third-party registration, errors, the allow-list."""

import subprocess
import sys

import pytest

from llm_tflite import hookimpl
from llm_tflite.plugins import registry
from llm_tflite.errors import PluginError, UnknownFamilyError, UnknownStrategyError
from llm_tflite.plugins.manager import load_plugins, pm
from llm_tflite.quantize.base import QuantizationStrategy


def test_builtins_register_through_hooks():
    load_plugins()
    assert "gpt2" in registry.families()
    assert {"none", "dynamic_int8", "float16"} <= set(registry.strategies())
    assert registry.families()["gpt2"].plugin == "llm_tflite.families.gpt2"
    assert "gpt2_tiny_shakespeare" in registry.presets()


def test_unknown_names_list_what_exists():
    with pytest.raises(UnknownFamilyError, match="unknown model family 'llama9'.*gpt2"):
        registry.get_family("llama9")
    with pytest.raises(UnknownStrategyError, match="unknown quantization strategy 'int1'.*dynamic_int8"):
        registry.get_strategy("int1")


class HalfStrategy(QuantizationStrategy):
    name = "test_half"
    description = "a strategy registered by a test plugin"


class FakePlugin:
    @hookimpl
    def register_quantizers(self, register):
        register(HalfStrategy())


class RaisingPlugin:
    @hookimpl
    def register_families(self, register):
        raise RuntimeError("boom")


@pytest.fixture
def registered():
    plugins = []

    def register(plugin, name):
        load_plugins()
        pm.register(plugin, name=name)
        plugins.append(plugin)

    yield register
    for plugin in plugins:
        pm.unregister(plugin)


def test_third_party_strategy_appears(registered):
    registered(FakePlugin(), "fake")
    assert registry.get_strategy("test_half").description.startswith("a strategy")
    assert registry.strategies()["test_half"].plugin == "fake"


def test_plugin_that_raises_is_named(registered):
    registered(RaisingPlugin(), "raiser")
    with pytest.raises(PluginError, match="'raiser'.*register_families.*boom"):
        registry.families()


def test_misspelled_hook_fails_loudly():
    class Misspelled:
        @hookimpl
        def register_familes(self, register):
            pass

    load_plugins()
    pm.register(Misspelled(), name="misspelled")
    try:
        with pytest.raises(Exception, match="register_familes"):
            pm.check_pending()
    finally:
        pm.unregister(name="misspelled")


def test_allow_list_env_var_skips_entry_points(tmp_path):
    """LLM_TFLITE_PLUGINS='' loads no third-party plugin, even a broken one."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[llm_tflite]\nbroken = no_such_module_xyz\n")
    code = "from llm_tflite.plugins import registry; print(sorted(registry.families()))"
    env_base = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    import os

    env = {**os.environ, **env_base}
    broken = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert broken.returncode != 0 and "broken-plugin" in broken.stderr and "LLM_TFLITE_PLUGINS" in broken.stderr
    allowed = subprocess.run([sys.executable, "-c", code], env={**env, "LLM_TFLITE_PLUGINS": ""},
                             capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert "gpt2" in allowed.stdout


class PresetPlugin:
    @hookimpl
    def register_presets(self, register):
        from llm_tflite import Preset

        register(Preset(name="test_alias", family="gpt2", source="gpt2_tiny_shakespeare", description="alias"))


def test_third_party_preset_resolves_to_its_family(registered):
    registered(PresetPlugin(), "presets")
    assert registry.presets()["test_alias"].plugin == "presets"
    assert registry.resolve_family("test_alias").name == "gpt2"


def test_core_never_names_the_example_plugin():
    """Out-of-tree means out of tree: the Mistral plugin is found through its entry point only (the core's
    own Llama 3.x family is another family)."""
    import pathlib

    core = pathlib.Path(__file__).resolve().parents[1] / "llm_tflite"
    naming = [str(p) for p in core.rglob("*.py") if "mistral" in p.read_text(encoding="utf-8").lower()]
    assert naming == []


def test_family_that_raises_while_tracing_gives_a_clear_error(registered, tiny_gpt2_dir, tmp_path):
    """A plugin family whose forward pass raises: ConversionError naming the family, no file written."""
    from llm_tflite import Converter
    from llm_tflite.families.gpt2 import GPT2Family
    from llm_tflite.errors import ConversionError

    class BrokenFamily(GPT2Family):
        name = "broken_gpt2"

        def forward_with_cache(self, model, tokens, input_pos, caches):
            raise KeyError("layer_norm_7")

    class BrokenPlugin:
        @hookimpl
        def register_families(self, register):
            register(BrokenFamily())

    registered(BrokenPlugin(), "broken")
    with pytest.raises(ConversionError, match="family 'broken_gpt2' failed while building.*KeyError"):
        Converter(prefill_lengths=(4,)).convert(str(tiny_gpt2_dir), str(tmp_path / "x.tflite"), family="broken_gpt2")
    assert not (tmp_path / "x.tflite").exists()


class CommandPlugin:
    @hookimpl
    def register_commands(self, cli):
        p = cli.add_parser("hello", help="say hello (a test plugin's command)")
        p.add_argument("--name", default="world", help="who to greet")
        p.set_defaults(func=lambda args: print(f"hello, {args.name}") or 3)


def test_a_plugin_adds_a_subcommand(registered, capsys):
    from llm_tflite.cli import main

    registered(CommandPlugin(), "commands")
    assert main(["hello", "--name", "plugin"]) == 3
    assert capsys.readouterr().out == "hello, plugin\n"
    with pytest.raises(SystemExit):
        main(["hello", "--help"])
    page = capsys.readouterr().out
    assert "who to greet (default: world)" in page and "--quiet" in page


class NoArgumentPlugin:
    """pluggy passes an implementation only the hook arguments it names: none is fine."""

    called = 0

    @hookimpl
    def register_presets(self):
        NoArgumentPlugin.called += 1


def test_hooks_are_called_through_pluggy(registered):
    registered(NoArgumentPlugin(), "no_arguments")
    assert "gpt2_tiny_shakespeare" in registry.presets()
    assert NoArgumentPlugin.called == 1


class CommandRaisingPlugin:
    @hookimpl
    def register_commands(self, cli):
        raise RuntimeError("no commands today")


def test_a_raising_command_plugin_is_named(registered, capsys):
    from llm_tflite.cli import main

    registered(CommandRaisingPlugin(), "bad_commands")
    assert main(["plugins"]) == 1
    assert "'bad_commands'" in capsys.readouterr().err


class SamplerPlugin:
    @hookimpl
    def register_samplers(self, register):
        from llm_tflite.runtime.sampling import TokenSampler

        class Lowest(TokenSampler):
            name = "test_lowest"
            deterministic = True

            def __call__(self, logits, history):
                return int(logits.argmin())

        register(Lowest)


def test_a_plugin_sampler_is_used_by_name(registered, tiny_tflite):
    from llm_tflite import InterpreterRunner

    registered(SamplerPlugin(), "samplers")
    runner = InterpreterRunner(tiny_tflite)
    result = runner.complete("ROMEO:", 6, "test_lowest")
    logits = runner.logits(runner.encode("ROMEO:"))[-1]
    assert result.token_ids[0] == int(logits.argmin())
    assert "test_lowest" in registry.samplers()
    # deterministic = True: output the filter rejects is not generated again (the same text would come)

    class RejectsOutput:
        def find(self, text):
            return None if text == "ROMEO:" else text

    filtered = runner.complete("ROMEO:", 6, "test_lowest", filter=RejectsOutput(), seed=1)
    assert filtered.finish_reason == "filtered" and filtered.attempts == 1
    assert runner.complete("ROMEO:", 6, "random", filter=RejectsOutput(), seed=1).attempts == 3  # FILTER_TRIES


class FilterPlugin:
    @hookimpl
    def register_filters(self, register):
        class Digits:
            name = "test_digits"

            def find(self, text):
                return next((c for c in text if c.isdigit()), None)

        register(Digits())


def test_a_plugin_filter_is_used_by_name(registered, tiny_tflite):
    from llm_tflite import InterpreterRunner

    registered(FilterPlugin(), "filters")
    assert {"profanity", "test_digits"} <= set(registry.filters())
    result = InterpreterRunner(tiny_tflite).complete("call 555 now", 6, filter="test_digits")
    assert result.finish_reason == "filtered" and result.filtered == "5" and result.token_ids == []
