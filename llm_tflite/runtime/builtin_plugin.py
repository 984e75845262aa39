"""The runtime's built-in plugin: the default profanity filter, registered like a third party's."""

from llm_tflite.plugins.hookspecs import hookimpl


class _DefaultProfanityFilter:
    """The default word list, loaded when first used."""

    name = "profanity"
    description = "whole listed words (better-profanity's list, trimmed), case-insensitive, common obfuscations"

    def find(self, text):
        from llm_tflite.runtime.filters import default_filter

        return default_filter().find(text)


@hookimpl
def register_filters(register):
    register(_DefaultProfanityFilter())
