"""The user's choices: the schema and its validation (``schema``), options in files
(``files``), and precedence with blame (``resolve``)."""

from .files import (CONFIG_FILE, FILE_ONLY, POSITIONAL, RUN_ONLY, load_options_file, option_names,
                    option_types, options_dict, options_from_table, options_toml, output_options,
                    plain)
from .resolve import resolve, validated_from, with_options
from .schema import (COLOR_SCALES, ORDERS, POINTS, PROJECTIONS, REBEL_Z, SCALES, SETTLE_FRACTION,
                     SUFFIXES, TIMELINES, InfoConfig, PublishConfig, Remote, RenderConfig,
                     Selection, StatsConfig, as_location, parse_memory, parse_size, parse_steps)
from .validate import validate

__all__ = [
    "CONFIG_FILE", "FILE_ONLY", "POSITIONAL", "RUN_ONLY", "load_options_file", "option_names",
    "option_types", "options_dict", "options_from_table", "options_toml", "output_options",
    "plain", "resolve", "validated_from", "with_options", "COLOR_SCALES", "ORDERS", "POINTS",
    "PROJECTIONS", "REBEL_Z", "SCALES", "SETTLE_FRACTION", "SUFFIXES", "TIMELINES", "InfoConfig",
    "PublishConfig", "Remote", "RenderConfig", "Selection", "as_location",
    "StatsConfig", "parse_memory", "parse_size", "parse_steps", "validate",
]
