# Batch rendering with Make: every run folder under $(RUNS) becomes films/<run>.webm,
# films/<run>.gif, films/<run>-stills/ and films/<run>-stats/ (layer_stats.csv and
# layer_change.png from layerfilm stats), in parallel and incrementally.
#
#   make -f examples/batch.mk -j4                # render what is missing or out of date
#   make -f examples/batch.mk -n                 # show what would be rendered, render nothing
#   make -f examples/batch.mk -j4 -k             # keep going past a run that fails
#   make -f examples/batch.mk -j4 RUNS=ckpts FILMS=out FORMATS="webm gif mp4"
#   make -f examples/batch.mk publish REPO_ID=you/films
#   make -f examples/batch.mk publish PUBLISH_BUCKET=you/films   # a Storage Bucket instead
#
# Each film's target is its manifest, films/<run>.<format>.json, which layerfilm writes only
# after the film itself is in place.  A film is rendered again when any file of its run
# (checkpoints, metrics.jsonl, ...; two folders deep) or the config file is newer than its
# manifest.  A render that fails exits non-zero and writes neither film nor manifest (an older
# film stays as it was), so Make stops that target alone and retries it next time.
# The stats of a run are made again on the same conditions; their target is
# films/<run>-stats/layer_change.png, which layerfilm stats writes last.
# Run names must not contain spaces.

LAYERFILM ?= layerfilm
RUNS      ?= runs
FILMS     ?= films
FORMATS   ?= webm gif
LFFLAGS   ?= --quiet
# Options for every film: layerfilm.toml here, else pyproject.toml if it has [tool.layerfilm].
CONFIG    ?= $(firstword $(wildcard layerfilm.toml) $(shell grep -ls '^\[tool\.layerfilm\]' pyproject.toml))
# Stills (first.png, last.png, contact_sheet.png) are written into films/<run>-stills by the
# render of one format (STILLS_WITH), with the option STILLS names (--stills; --frames would
# write every frame as a PNG instead; empty: no stills).
STILLS      ?= --stills
STILLS_WITH ?= $(firstword $(FORMATS))
# Options for layerfilm stats, which writes films/<run>-stats (empty: no stats).  --layouts fills
# the two layout columns: from the layout cache the run's first film left (stats runs after
# it), else computed, so they never depend on the order Make ran things in.
STATS       ?= --quiet --layouts

runs      := $(patsubst $(RUNS)/%/,%,$(wildcard $(RUNS)/*/))
manifests := $(foreach format,$(FORMATS),$(runs:%=$(FILMS)/%.$(format).json))
tables    := $(if $(STATS),$(runs:%=$(FILMS)/%-stats/layer_change.png))

.PHONY: all publish
.DELETE_ON_ERROR:
all: $(manifests) $(tables)

$(FILMS):
	mkdir -p $@

# Everything one run's films depend on.
inputs = $(wildcard $(RUNS)/$(1)/* $(RUNS)/$(1)/*/*) $(CONFIG)
# The stills options for run $(1) when rendering format $(2).
stills = $(if $(and $(STILLS),$(filter $(2),$(STILLS_WITH))),$(STILLS) $(FILMS)/$(1)-stills)

# One pattern rule per run (the stem is the format): films/<run>.%.json from that run's files.
define run_rule
$(FILMS)/$(1).%.json: $(call inputs,$(1)) | $(FILMS)
	$$(if $$(call stills,$(1),$$*),rm -rf $(FILMS)/$(1)-stills)
	$(LAYERFILM) render $(LFFLAGS) $(if $(CONFIG),--config $(CONFIG)) $$(call stills,$(1),$$*) $(RUNS)/$(1) $(FILMS)/$(1).$$*

# films/<run>-stats from the same files; after the run's first film (order only), whose
# layouts it reuses.
$(FILMS)/$(1)-stats/layer_change.png: $(call inputs,$(1)) | $(FILMS) $(patsubst %,$(FILMS)/$(1).%.json,$(firstword $(FORMATS)))
	$(LAYERFILM) stats $(STATS) $(if $(CONFIG),--config $(CONFIG)) --out $(FILMS)/$(1)-stats $(RUNS)/$(1)
endef
$(foreach run,$(runs),$(eval $(call run_rule,$(run))))

# Each film goes up with its manifest, films/<run>-stills and films/<run>-stats.
# PUBLISH_BUCKET=user/name[/folder] sends them to a Storage Bucket (only what changed).
publish: all
	@test -n "$(REPO_ID)$(PUBLISH_BUCKET)" || { echo "usage: make -f examples/batch.mk publish REPO_ID=user/name (or PUBLISH_BUCKET=user/name)" >&2; exit 2; }
	$(LAYERFILM) publish $(manifests:.json=) $(if $(PUBLISH_BUCKET),--bucket $(PUBLISH_BUCKET),--repo-id $(REPO_ID)) $(PUBLISH_FLAGS)
