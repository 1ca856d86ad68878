"""GLUE task table, TSV reader and tfds builder on tiny files; row counts on the real shared files."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flaxprune.data import glue
from flaxprune.data.glue import GLUE_TASKS, get_task, load_glue, read_glue_tsv

BOM = "\ufeff"
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
MNLI_TRAIN_HEADER = "\t".join(
    ["index", "promptID", "pairID", "genre", "s1_bin", "s2_bin", "s1_parse", "s2_parse", "sentence1", "sentence2"]
    + ["label1", "gold_label"]
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")


def _mnli_row(i, s1, s2, label, dev=False):
    votes = [label] * (5 if dev else 1)
    return "\t".join([str(i), "p", "q", "fiction", "(", "(", "(", "(", s1, s2, *votes, label])


def _write(root, folder, files):
    directory = root / folder
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return root


def _prepare(tmp_path, task, files):
    manual = _write(tmp_path / "glue_data", get_task(task).folder, files)
    return load_glue(task, tmp_path / "data", manual)


def test_task_table():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
    assert {t.folder for t in GLUE_TASKS.values()} == {
        "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI"
    }  # fmt: skip
    assert [n for n, t in GLUE_TASKS.items() if not t.is_pair] == ["cola", "sst2"]
    assert [n for n, t in GLUE_TASKS.items() if not t.header] == ["cola"]
    stsb, mnli, mrpc, cola = (GLUE_TASKS[n] for n in ("stsb", "mnli", "mrpc", "cola"))
    assert stsb.is_regression and stsb.num_labels == 1 and (stsb.sentence1, stsb.sentence2, stsb.label) == (7, 8, 9)
    assert mnli.label_names == ("contradiction", "entailment", "neutral") and mnli.num_labels == 3
    assert mnli.dev_splits == ("dev", "dev_mismatched")
    assert dict(mnli.splits)["dev"] == "dev_matched.tsv"
    assert GLUE_TASKS["qnli"].label_names == GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert (mrpc.label, mrpc.sentence1, mrpc.sentence2) == (0, 3, 4)
    assert mrpc.metrics == ("accuracy", "f1", "accuracy_and_f1") and mrpc.primary_metric == "accuracy_and_f1"
    assert GLUE_TASKS["qqp"].primary_metric == "accuracy_and_f1"
    assert stsb.primary_metric == "pearson_and_spearman"
    assert (cola.label, cola.sentence1, cola.num_columns, cola.primary_metric) == (1, 3, 4, "matthews_correlation")
    for name in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert GLUE_TASKS[name].primary_metric == "accuracy"
        assert GLUE_TASKS[name].dev_splits == (("dev", "dev_mismatched") if name == "mnli" else ("dev",))
    for task in GLUE_TASKS.values():
        assert task.primary_metric in task.metrics


def test_get_task_accepts_folder_names_and_lists_tasks():
    assert get_task("SST-2") is get_task("sst2") is GLUE_TASKS["sst2"]
    assert get_task("STS-B").name == "stsb"
    with pytest.raises(ValueError, match=r"task='SNLI' is not a GLUE task; accepted: cola \(CoLA\), sst2 \(SST-2\)"):
        get_task("SNLI")
    with pytest.raises(ValueError, match="accepted: .*wnli"):
        load_glue("snli", "/nonexistent")


def test_pair_task_with_bom_header(tmp_path):
    text = BOM + MRPC_HEADER + '1\t11\t12\tHe said " hi .\tHe said hi .\n0\t21\t22\tA b .\tC d .\n'
    splits = _prepare(tmp_path, "mrpc", {"train.tsv": text, "dev.tsv": MRPC_HEADER + "1\t1\t2\tx\ty\n"})
    s1, s2, labels = splits["train"]
    assert s1 == ['He said " hi .', "A b ."]  # the BOM went with the header; the lone quote is kept
    assert s2 == ["He said hi .", "C d ."]
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [1, 0])
    assert splits["dev"][0] == ["x"] and splits["dev"][1] == ["y"]


def test_builder_features_and_order(tmp_path):
    rows = "".join(f"{y}\t1\t2\tfirst {i}\tsecond {i}\n" for i, y in enumerate((0, 1, 0, 0, 1, 1, 0)))
    manual = _write(tmp_path / "glue_data", "MRPC", {"train.tsv": MRPC_HEADER + rows, "dev.tsv": MRPC_HEADER + rows})
    builder = glue.Glue(config="mrpc", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert set(builder.info.splits) == {"train", "dev"}
    assert builder.info.features["label"].names == ["0", "1"]
    assert builder.info.features["idx"].np_dtype == np.int32
    assert builder.info.metadata["source"]["train"] == {"file": "MRPC/train.tsv", "bytes": len(MRPC_HEADER + rows)}
    source = builder.as_data_source(split="train")
    assert [int(source[i]["idx"]) for i in range(len(source))] == list(range(7))  # file order kept
    assert source[3]["sentence1"] == b"first 3" and source[3]["label"] == 0


def test_single_sentence_task(tmp_path):
    header = "sentence\tlabel\n"
    splits = _prepare(
        tmp_path, "sst2", {"train.tsv": header + "good film \t1\nbad\t0\n", "dev.tsv": header + "ok\t1\n"}
    )
    s1, s2, labels = splits["train"]
    assert s1 == ["good film ", "bad"] and s2 is None
    np.testing.assert_array_equal(labels, [1, 0])


def test_cola_has_no_header(tmp_path):
    train = "gj04\t1\t\tOur friends won't buy this analysis.\nr-67\t0\t*\tThey drank the pub.\n"
    splits = _prepare(tmp_path, "CoLA", {"train.tsv": train, "dev.tsv": "x\t1\t\tFine.\n"})
    s1, s2, labels = splits["train"]
    assert s1 == ["Our friends won't buy this analysis.", "They drank the pub."] and s2 is None
    np.testing.assert_array_equal(labels, [1, 0])
    assert splits["dev"][0] == ["Fine."]


def test_regression_task(tmp_path):
    row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t{}\n"
    train = STSB_HEADER + row.format("5.000") + row.format("0.25")
    splits = _prepare(tmp_path, "stsb", {"train.tsv": train, "dev.tsv": STSB_HEADER + row.format("3")})
    s1, s2, labels = splits["train"]
    assert s1 == ["A plane.", "A plane."] and s2 == ["An air plane.", "An air plane."]
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [5.0, 0.25])
    builder = glue.Glue(config="stsb", data_dir=str(tmp_path / "data"))
    assert builder.info.features["label"].np_dtype == np.float32


def test_mnli_string_labels_and_both_dev_splits(tmp_path):
    train = "\n".join(
        [MNLI_TRAIN_HEADER, _mnli_row(0, "a", "b", "neutral"), _mnli_row(1, "c", "d", "contradiction")]
    )
    matched = "\n".join([MNLI_DEV_HEADER, _mnli_row(0, "e", "f", "entailment", dev=True)])
    mismatched = "\n".join([MNLI_DEV_HEADER, _mnli_row(0, "g", "h", "neutral", dev=True)])
    files = {"train.tsv": train + "\n", "dev_matched.tsv": matched + "\n", "dev_mismatched.tsv": mismatched}
    splits = _prepare(tmp_path, "mnli", files)
    assert set(splits) == {"train", "dev", "dev_mismatched"}
    s1, s2, labels = splits["train"]
    assert (s1, s2) == (["a", "c"], ["b", "d"])
    np.testing.assert_array_equal(labels, [2, 0])
    assert splits["dev"][0] == ["e"] and list(splits["dev"][2]) == [1]  # from dev_matched.tsv
    assert splits["dev_mismatched"][0] == ["g"] and list(splits["dev_mismatched"][2]) == [2]


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\ntoo\tmany\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:3: expected 2 tab-separated columns, got 3"):
        list(read_glue_tsv("sst2", path))
    path.write_text("a\t1\t\tok\nb\t1\tmissing one\n", encoding="utf-8")  # CoLA, headerless
    with pytest.raises(ValueError, match=f"{path}:2: expected 4 tab-separated columns, got 3"):
        list(read_glue_tsv("cola", path))
    # Through the builder too, before anything is written.
    manual = _write(tmp_path / "glue_data", "SST-2", {"train.tsv": "sentence\tlabel\nx\n", "dev.tsv": "s\tl\n"})
    with pytest.raises(ValueError, match=r"SST-2/train.tsv:2: expected 2 tab-separated columns, got 1"):
        load_glue("sst2", tmp_path / "data", manual)


def test_bad_labels_name_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: label 'entailed' is not one of .'entailment', 'not_entailment'"):
        list(read_glue_tsv("rte", path))
    path.write_text(STSB_HEADER + "\t".join(["0"] * 9 + ["high"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: label 'high' is not a number"):
        list(read_glue_tsv("stsb", path))


def test_missing_files(tmp_path):
    manual = _write(tmp_path / "glue_data", "RTE", {"train.tsv": "index\tsentence1\tsentence2\tlabel\n"})
    missing = manual / "RTE" / "dev.tsv"
    with pytest.raises(FileNotFoundError, match=f"missing {missing}"):
        load_glue("rte", tmp_path / "data", manual)
    assert not (tmp_path / "data" / "glue").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(read_glue_tsv("rte", tmp_path / "nope.tsv"))


def test_reused_and_not_served_stale(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel\n"
    files = {"train.tsv": header + "0\ta\tb\t1\n", "dev.tsv": header + "0\tc\td\t0\n"}
    first = _prepare(tmp_path, "wnli", files)
    again = load_glue("wnli", tmp_path / "data")  # no manual dir: the prepared data is reused
    assert again["train"][0] == first["train"][0] == ["a"]
    other = _write(tmp_path / "other", "WNLI", {**files, "train.tsv": header + "0\ta\tb\t1\n1\te\tf\t0\n"})
    with pytest.raises(ValueError, match="was prepared from .* now holds"):
        load_glue("wnli", tmp_path / "data", other)


@pytest.mark.parametrize("task, train, dev", [("sst2", 67_349, 872), ("mrpc", 3_667, 408), ("stsb", 5_749, 1_500)])
def test_real_files_row_counts(shared_data, task, train, dev):
    root = shared_data / "glue"
    if not (root / GLUE_TASKS[task].folder / "train.tsv").is_file():
        pytest.skip(f"{root / GLUE_TASKS[task].folder} is absent")
    # MRPC: the shared train.tsv has 3,667 rows (the canonical one 3,668; see shared/data/README.md).
    files = glue.glue_files(task, root)
    counts = {split: sum(1 for _ in read_glue_tsv(task, path)) for split, path in files.items()}
    assert counts == {"train": train, "dev": dev}


@pytest.mark.parametrize("task", ["mrpc", "stsb"])  # small enough to prepare in a test (SST-2 takes ~20 s)
def test_real_files_through_the_builder(shared_data, tmp_path, task):
    root = shared_data / "glue"
    if not (root / GLUE_TASKS[task].folder / "train.tsv").is_file():
        pytest.skip(f"{root / GLUE_TASKS[task].folder} is absent")
    splits = load_glue(task, tmp_path, root)
    s1, s2, labels = splits["dev"]
    assert len(s1) == len(s2) == len(labels) == (408 if task == "mrpc" else 1_500)
    if task == "mrpc":
        assert s1[0].startswith("He said the foodservice pie business") and labels[0] == 1
        assert set(np.unique(splits["train"][2])) == {0, 1}
    else:
        assert s1[0] == "A man with a hard hat is dancing." and s2[0] == "A man wearing a hard hat is dancing."
        assert labels[0] == 5.0
        assert 0.0 <= labels.min() and labels.max() <= 5.0
