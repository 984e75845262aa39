"""Errors users can catch. Every message says what to do next."""


class LLMTFLiteError(Exception):
    """Base class of every error llm-tflite raises on purpose."""


class UnknownFamilyError(LLMTFLiteError, KeyError):
    """No registered model family has this name."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownStrategyError(LLMTFLiteError, KeyError):
    """No registered quantization strategy has this name."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ModelSourceError(LLMTFLiteError):
    """A model could not be loaded from the given preset, handle, directory or object."""


class ModelFileError(LLMTFLiteError):
    """A ``.tflite`` file is missing, unreadable, corrupt or not one of ours."""


class ContextLengthError(LLMTFLiteError, ValueError):
    """A prompt does not fit in the model's context window."""


class RuntimeFailure(LLMTFLiteError):
    """The native interpreter failed while running a file that passed every check at load."""


class UnsupportedRuntimeError(LLMTFLiteError):
    """The installed runtime cannot run this file (e.g. it needs the Flex delegate)."""


class ConversionError(LLMTFLiteError):
    """TensorFlow Lite conversion or quantization failed."""


class ModelTooLargeError(ConversionError):
    """A model's weights would not fit a ``.tflite`` file in the chosen format (checked before converting)."""


class InvalidArgumentError(LLMTFLiteError, ValueError):
    """An argument (token count, sampler setting, seed, token id, ...) is out of its allowed range."""


class OutputPathError(LLMTFLiteError):
    """An output file or directory cannot be written (checked before the work starts)."""


class DataError(LLMTFLiteError, ValueError):
    """Training, calibration or evaluation data is missing, empty or malformed."""


class PluginError(LLMTFLiteError):
    """A plugin failed to load or raised inside a hook."""


class ChatTemplateError(LLMTFLiteError):
    """A chat template cannot be compiled or rendered: broken, hostile, or past its limits of size and time."""


class ConversationFileError(ModelFileError):
    """A saved conversation (its messages and KV cache) is damaged, or was saved from another model file."""
