"""The longer help of the ``flaxprune`` commands: what ``flaxprune <command> --help`` prints below the flags."""

__all__ = ["BENCH_NOTES", "EXPORT_NOTES", "PLOT_NOTES", "TRAIN_NOTES"]

TRAIN_NOTES = """\
Rerunning the same command resumes the run from the newest checkpoint in --workdir. On SIGTERM the run
saves a checkpoint and exits 0, so a preempted job continues exactly where it stopped when rerun.

--config.SECTION.FIELD=VALUE overrides one field of the config file (e.g. --config.prune.target=0.8,
--config.train.steps=4000); give any number of them, after --config. The value is parsed as the field's
type; a key the config lacks is an error (the config file lists its fields, one commented line each).

At the end, train prints the run's summary as JSON ("status" says whether it finished or was preempted)."""

EXPORT_NOTES = """\
Give --workdir=RUN (the run's reduced/ model) or --checkpoint=DIR (a reduced model from flaxprune shrink, or a
run directory), not both. --output receives model.jaxexport (the eval-mode forward, lowered for CPU, CUDA and
TPU, batch and sequence length symbolic where the model allows), weights.npz and manifest.json; it must be new
or empty, or an earlier export with --overwrite. Loading it needs only jax, numpy and flatbuffers: see the
README or flaxprune/export.py for the ten lines.

--format=hf (BERT classifiers: a GLUE run, or a reduced BERT) writes instead the folder transformers writes for
BertForSequenceClassification: config.json (with a flaxprune block giving each projection's kind and kept
rank), model.safetensors (PyTorch names and layouts; a factored projection as weight_in [r, in] and weight_out
[out, r]), the run's tokenizer files and a README.md. It reloads with flaxprune.hf_export.load_hf, or with
numpy and safetensors alone (the 30 lines in its README.md); with every projection dense it is a plain HF
checkpoint."""

PLOT_NOTES = """\
Writes into --workdir, beside metrics.jsonl: plot_training.png (training loss and metric, the evaluations'
valid_* scores), plot_sparsity.png for a pruning run (target, expected and hard sparsity, lambda_1 and lambda_2
over steps) and plot_ranks.png for a run with gates (kept rank / starting rank per layer and projection, read
from its best checkpoint, else its newest). Works during a run; every finished run writes them itself. Only
these three files are written (and replaced); headless (matplotlib Agg)."""

BENCH_NOTES = """\
Times, for the SRU LM, Transformer-XL and the BERT classifier, the model shrink returns at each --levels
sparsity (gates set without training, every gated layer cut by that fraction) against the unpruned gated
model in eval mode, the ungated and the dense model of the same size, over --batches x --seqs, all variants
interleaved in one process; and the train step (dense, ungated, and gated with the Lagrangian). Writes
--output/bench_<backend>.md and .json (bench_<backend>_quick.* with --quick): every raw sample, the
environment, the measured and theoretical (FLOPs) speedups and their ratio. Notes written by hand below the
marker in the .md survive a rerun. The full suite takes about 20 minutes on 2 CPU cores."""
