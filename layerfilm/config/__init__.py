"""The user's choices: the values a choice may take (``values``), the schema (``schema``) and
its validation (``validate``), options in files (``files``), and precedence with blame
(``resolve``)."""

from .files import (CONFIG_FILE, FILE_ONLY, POSITIONAL, RUN_ONLY, load_options_file, option_names,
                    option_types, options_dict, options_from_table, options_toml, output_options,
                    plain)
from .resolve import resolve, validated_from, with_options
from .schema import InfoConfig, PublishConfig, RenderConfig, Selection, StatsConfig
from .validate import validate
from .values import (COLOR_SCALES, ORDERS, POINTS, PROJECTIONS, REBEL_Z, SCALES, SETTLE_FRACTION,
                     SUFFIXES, TIMELINES, Remote, as_location, parse_memory, parse_size, parse_steps)

__all__ = [
    "CONFIG_FILE", "FILE_ONLY", "POSITIONAL", "RUN_ONLY", "load_options_file", "option_names",
    "option_types", "options_dict", "options_from_table", "options_toml", "output_options",
    "plain", "resolve", "validated_from", "with_options", "COLOR_SCALES", "ORDERS", "POINTS",
    "PROJECTIONS", "REBEL_Z", "SCALES", "SETTLE_FRACTION", "SUFFIXES", "TIMELINES", "InfoConfig",
    "PublishConfig", "Remote", "RenderConfig", "Selection", "as_location",
    "StatsConfig", "parse_memory", "parse_size", "parse_steps", "validate",
]
