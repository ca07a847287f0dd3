"""The plugin API: every kernel name a plugin may import, from this one module.

    from spurcore.api import MitigationSpec, positive, linear_head

These names keep their meaning across releases; anything else in the kernel is internal and
may change. Each name is imported from its module when it is first read, so a plugin's entry
module that imports only options, validators and specs from here imports no torch, and
`spur --help` stays fast. docs/api.md is generated from `REFERENCE` by
docs/make_api_reference.py.
"""

from __future__ import annotations

from spurcore.lazy import lazy_exports

# (section, note, {name: ("module:attr", one line; None: the first line of the object's docstring)})
REFERENCE: tuple[tuple[str, str, dict[str, tuple[str, str | None]]], ...] = (
    ("Hooks and plugins", "", {
        "hookimpl": ("spurcore.hookspecs:hookimpl",
                     "the marker for hook implementations (`@hookimpl`, `@hookimpl(tryfirst=True)`); "
                     "`from spurcore import hookimpl` is the same marker."),
        "hookspec": ("spurcore.hookspecs:hookspec",
                     "the marker for the hook specifications of a kind a plugin declares (`KindSpec.hookspecs`)."),
        "PluginManager": ("spurcore.plugins:PluginManager",
                          "loads plugins; `get(kind, name)`, `registry(kind)`, `kinds`, `infos()` (what `spur "
                          "plugins` shows), `stage_hooks(spec)`, `hook`."),
        "PluginError": ("spurcore.plugins:PluginError", None),
        "Registry": ("spurcore.plugins:Registry",
                     "what hooks see of the plugins as `run.plugins`: `get(kind, name)`, `names(kind)`, `specs(kind)` "
                     "and `require(plugins)`, read only."),
        "plugin_manager": ("spurcore.cli:plugin_manager",
                           "the `spur` invocation's plugin manager, for the commands a plugin adds."),
        "cli": ("spurcore.cli:cli",
                "the `spur` command group: `spurcore_register_commands(cli)` adds commands to it; tests "
                "invoke it with click's `CliRunner`."),
        "lazy": ("spurcore.lazy:lazy",
                 "a registration record's factory (or `build`) named by `\"module:attr\"` and imported on "
                 "the first call, so that gathering the registry imports no torch; `keywords` are passed on "
                 "every call. Planning a pipeline imports the ones it uses, so that a module that cannot be "
                 "imported stops the run before it starts; the stage hooks of a lazy mitigation class are "
                 "read off the class without building it."),
        "lazy_exports": ("spurcore.lazy:lazy_exports",
                         "`__getattr__, __dir__ = lazy_exports(__name__, {name: \"module:attr\"})`: a "
                         "package's public names, imported when first read (PEP 562)."),
    }),
    ("Registration records", "What registration hooks return; each class's docstring describes its fields.", {
        "DatasetSpec": ("spurcore.specs:DatasetSpec",
                        "`name`, `build(options) -> SpuriousData`, `options` (an attrs class), `description`."),
        "BackboneSpec": ("spurcore.specs:BackboneSpec",
                         "`name`, `build(options, data) -> Backbone`, `options`, `description`."),
        "MitigationSpec": ("spurcore.specs:MitigationSpec",
                           "`name`, `factory(options) -> stage object`, `kind` (\"train\" or \"posthoc\"), "
                           "`options`, `needs_attributes` (splits, or a function of the options), "
                           "`train_defaults`, `search_space`, `fine_tunes`, `check`, `description`."),
        "SelectorSpec": ("spurcore.specs:SelectorSpec",
                         "`name`, `score(candidate) -> float` (higher wins), `needs_attributes`, `metrics`, "
                         "`splits` (whose metrics the score reads; default `(\"val\",)`), `description`."),
        "MetricSpec": ("spurcore.specs:MetricSpec",
                       "`name`, `compute(predictions) -> {key: value}`, `needs_attributes`, `description`."),
        "ObserverSpec": ("spurcore.specs:ObserverSpec",
                         "`name`, `factory(settings) -> observer or None`, `settings` (an attrs class for "
                         "`[settings.<name>]`), `description`."),
        "record_name": ("spurcore.specs:record_name", None),
        "KindSpec": ("spurcore.specs:KindSpec",
                     "`name`, `record` (the class of its records), `hookspecs` (where `spurcore_register_<name>` is "
                     "specified), `description`: a kind of registration a plugin owns (`spurcore_register_kinds`)."),
    }),
    ("What hooks receive", "Built by the kernel; a plugin constructs a `Candidate` only to score a saved "
                           "model with a selector.", {
        "RunContext": ("spurcore.context:RunContext", None),
        "StageContext": ("spurcore.context:StageContext",
                         "one stage of a run: `index`, `name`, `key`, `spec`, `options`, `train` (the effective "
                         "training settings), `method`, `model` (replaceable at `spurcore_stage_start`), "
                         "`optimizer`, `scheduler`, `first_epoch`."),
        "Candidate": ("spurcore.context:Candidate",
                      "a model a selector may choose: `stage`, `epoch`, `metrics` (split -> metrics, for the "
                      "splits its selector declares only), `load_model()`, `data`."),
    }),
    ("Data", "", {
        "SpuriousData": ("spurcore.data:SpuriousData",
                         "a dataset: `name`, `splits`, `class_names`, `attr_names`, `input_shape`, `normalization`, "
                         "`n_classes`, `n_attrs`, `n_groups`, `group_names`, `groups(split)`, `group_counts(split)`."),
        "Normalization": ("spurcore.data:Normalization",
                          "`SpuriousData.normalization`: the per-channel `mean` and `std` image inputs were "
                          "normalized with (pixels in [0, 1]), for backbones whose weights expect others."),
        "SplitData": ("spurcore.data:SplitData",
                      "one split: `name`, `inputs` (a tensor, or a map-style dataset), `y`, `a` (None without "
                      "attribute labels), `has_attributes`."),
        "Batch": ("spurcore.data:Batch",
                  "`index`, `x`, `y`, `a` (`MISSING_ATTRIBUTE` where the split has none)."),
        "MISSING_ATTRIBUTE": ("spurcore.data:MISSING_ATTRIBUTE",
                              "the attribute value of a batch from a split without attribute labels."),
        "REQUIRED_SPLITS": ("spurcore.data:REQUIRED_SPLITS", "the splits every dataset has: train, val, test."),
        "group_ids": ("spurcore.data:group_ids",
                      "the group of each example, `y * n_attrs + a` (the one place it is computed)."),
        "iterate_batches": ("spurcore.data:iterate_batches", "a split's batches in a given order."),
        "train_subset_positions": ("spurcore.data:train_subset_positions",
                                   "the training positions `[dataset] train_subset` keeps for a seed: which "
                                   "examples a run trained on."),
        "content_digest": ("spurcore.data:content_digest",
                           "what a dataset holds (labels, and inputs through a dataset's `content_key()`: an "
                           "image folder's file index), as a digest a cache derived from it keys on."),
    }),
    ("Models and devices", "", {
        "Backbone": ("spurcore.model:Backbone",
                     "what a backbone plugin builds: `module`, `feature_dim` and optionally `layout`."),
        "Layout": ("spurcore.model:Layout",
                   "what a backbone declares about its inside, as module paths: `blocks` (where \"after block k\" "
                   "is), `neurons` (the modules whose units are the tracer's neurons), `tokens` (a `TokenGrid`)."),
        "TokenGrid": ("spurcore.model:TokenGrid",
                      "a transformer's token layout (`prefix`, `rows`, `cols`); `feature_map(tokens)` gives the "
                      "patch tokens as an (N, C, rows, cols) map."),
        "SpurModel": ("spurcore.model:SpurModel",
                      "`head(embed(x))`; `model(x, index=...)`, `model.features(x, index=...)`, "
                      "`model.context.index` for inserted layers, `feature_dim`, the backbone's `layout`, "
                      "`block_paths()` and `neuron_paths()` (its declared modules' paths in the model)."),
        "ForwardContext": ("spurcore.model:ForwardContext",
                           "`model.context`: the example indices (`index`) of the batch being run, for the "
                           "layers a method inserts."),
        "linear_head": ("spurcore.model:linear_head",
                        "an `nn.Linear` on the CPU in float32 from a weight (classes x features) and a bias "
                        "(classes), numpy arrays or tensors: what a post-hoc head returns."),
        "build_model": ("spurcore.model:build_model", "a `SpurModel` from a `Backbone` and a number of classes."),
        "Device": ("spurcore.device:Device",
                   "`device`, `move(batch)`, `autocast()`, `pin_memory`, `loader_options(num_workers)` (the "
                   "`iterate_batches` settings for this machine); the only place that knows about CUDA."),
        "to_device": ("spurcore.device:to_device", None),
        "available_cores": ("spurcore.device:available_cores", None),
        "writes_files": ("spurcore.distributed:writes_files",
                         "whether this process writes the run's files: False only on the ranks other than 0 "
                         "of a torchrun job. An observer that writes files or sends a run to a tracker "
                         "acts only where it is True."),
    }),
    ("Evaluation and embeddings",
     "What `spurcore_posthoc_head(run, stage, model, embeddings)` receives; the whole post-hoc contract "
     "(gradients on, what to return, where the head goes) is in the "
     "[tutorial](writing-plugins.md#5-a-post-hoc-method).", {
        "predict": ("spurcore.evaluation:predict",
                    "a model's logits on one split (eval mode, no hooks), e.g. JTT's error set."),
        "Predictions": ("spurcore.evaluation:Predictions",
                        "what metrics compute from: `y`, `pred`, `a`, `correct`, `groups`, `group_names`, "
                        "`n_classes`."),
        "Embeddings": ("spurcore.embeddings:Embeddings",
                       "`embeddings[split]` (or `.splits`, split -> `SplitEmbeddings`) for every split of the "
                       "data, from the model in eval mode without augmentation."),
        "SplitEmbeddings": ("spurcore.embeddings:SplitEmbeddings",
                            "numpy arrays on the CPU, row i for example i of the split: `features` (float32, "
                            "examples x `model.feature_dim`), `y` (int64 class labels), `a` (int64 attribute "
                            "labels, or `None` on a split without them)."),
        "extract": ("spurcore.embeddings:extract", "penultimate features of a model on every split."),
    }),
    ("Sampling", "Subsets are drawn from a numpy generator or from the `torch.Generator` that "
                 "`spurcore_train_sampler` receives; both give sorted numpy indices.", {
        "balanced_subset": ("spurcore.sampling:balanced_subset",
                            "indices in which every label appears equally often."),
        "balanced_weights": ("spurcore.sampling:balanced_weights",
                             "per-example weights that give every label the same total weight."),
        "capped_subset": ("spurcore.sampling:capped_subset",
                          "indices of up to `cap` examples of every label (all of a rarer one's)."),
    }),
    ("Options and pipelines", "Validators for options classes raise `FieldError`, which the kernel turns "
                              "into one message naming the pipeline key.", {
        "FieldError": ("spurcore.config:FieldError", "`FieldError(field, message)`."),
        "positive": ("spurcore.config:positive", "an attrs validator: > 0."),
        "non_negative": ("spurcore.config:non_negative", "an attrs validator: >= 0."),
        "fraction": ("spurcore.config:fraction", "an attrs validator: in [0, 1]."),
        "non_empty": ("spurcore.config:non_empty", "an attrs validator: not empty."),
        "structure": ("spurcore.config:structure",
                      "an attrs class from plain data (a TOML table), every error naming `where` and the key."),
        "to_dict": ("spurcore.config:to_dict", "an attrs instance (options, a pipeline) as plain data."),
        "parse_override": ("spurcore.config:parse_override",
                           "`KEY=VALUE` (a TOML value) as (path, value), as `-o` reads it."),
        "pipeline_from_dict": ("spurcore.config:pipeline_from_dict", "a validated pipeline from plain data."),
        "load_pipeline": ("spurcore.config:load_pipeline", "a validated pipeline from a TOML file."),
        "toml_dumps": ("spurcore.tomlwriter:dumps",
                       "plain data (a pipeline's tables) as a TOML document, as `config.toml` is written; "
                       "the standard library only."),
        "toml_literal": ("spurcore.tomlwriter:literal",
                         "one value as a TOML literal, for `KEY=VALUE` overrides."),
    }),
    ("Errors", "", {
        "SpurcoreError": ("spurcore.errors:SpurcoreError",
                          "the base of every error the CLI prints as one message (subclass it)."),
        "ConfigError": ("spurcore.errors:ConfigError", "bad configuration."),
        "DataError": ("spurcore.errors:DataError", "bad data."),
    }),
    ("Files and run directories", "", {
        "atomic": ("spurcore.atomic",
                   "files appear whole or not at all: `atomic.write_text`, `write_json`, `write_figure`, "
                   "`atomic_open`."),
        "RunDir": ("spurcore.rundir:RunDir",
                   "a run directory's layout: `config`, `summary`, `stage_dir(key)`, `checkpoint(key, epoch)`, "
                   "`epochs(key)`, `load_checkpoint(key, epoch)`, `read_summary()`."),
        "runlock": ("spurcore.runlock",
                    "`runlock.locked(folder)`: the lock a run holds on its folder while it writes there "
                    "(the file `runlock.LOCK_FILE`)."),
    }),
    ("Running and reading runs", "", {
        "run_pipeline": ("spurcore.runner:run_pipeline", "validate and run a pipeline into a run directory."),
        "plan": ("spurcore.planning:plan",
                 "validate a pipeline against the loaded plugins without running it; the plan's `stages` "
                 "carry each stage's `spec`, `options` and effective `train` settings, its `selector` the "
                 "selector's spec, its `dataset_options` the dataset's validated options."),
        "plan_saved": ("spurcore.planning:plan_saved", "the plan of the pipeline a run directory saved."),
        "open_run": ("spurcore.finished:open_run",
                     "a finished run read back with the plugin manager that ran it; `.load_model(stage, epoch)` "
                     "rebuilds any stage's model."),
        "FinishedRun": ("spurcore.finished:FinishedRun",
                        "what `open_run` returns: `path`, `out`, `config`, `data`, `device`, `stages`, "
                        "`stage(i)`, `resolve_epoch(stage, epoch)`, `load_model(stage, epoch)`, "
                        "`initial_model()` (the weights it started from)."),
        "starting_model": ("spurcore.finished:starting_model",
                           "the weights the model a stage receives was trained from (the `[init]` run's "
                           "starting model for a pipeline's first stage), for methods that retrain from the "
                           "same initialization (JTT, EIIL)."),
        "RunError": ("spurcore.planning:RunError", "the pipeline cannot run as configured."),
    }),
)

TARGETS = {name: target for _, _, names in REFERENCE for name, (target, _) in names.items()}
__all__ = sorted(TARGETS)
__getattr__, __dir__ = lazy_exports(__name__, TARGETS)
