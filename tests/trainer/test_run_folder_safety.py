"""What a run folder must survive: a data folder as output_dir, a subject table changed between
jobs, one scan under two ids, a damaged run.json or checkpoint, jobs of one run writing at once,
and a run whose folds have not all finished. Each is refused or said in one line, never a traceback
and never a file of the user's replaced."""
from __future__ import annotations

import hashlib
import json
import threading

import torch
from click.testing import CliRunner

from tests.trainerkit import TINY_RUN, blob_subjects, changed, write_config
from trainer.atomic import replace_text
from trainer.cli import main


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_data_folder_holding_a_summary_csv_is_no_run_folder(tmp_path):
    blob_subjects(tmp_path, count=4)
    table = tmp_path / "subjects.csv"
    summary = tmp_path / "summary.csv"
    summary.write_bytes(table.read_bytes())
    before = hashlib.sha256(summary.read_bytes()).hexdigest()
    config = write_config(tmp_path, {**TINY_RUN, "output_dir": "out", "data": {**TINY_RUN["data"],
                                                                                 "csv": "summary.csv"}})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "curves.png").write_bytes(b"the user's figure")
    line = one_error_line(CliRunner().invoke(main, ["fit", str(config)]))
    assert "holds a curves.png but no run.json" in line
    assert (tmp_path / "out" / "curves.png").read_bytes() == b"the user's figure"
    assert hashlib.sha256(summary.read_bytes()).hexdigest() == before


def test_an_output_dir_that_is_a_file_or_lies_below_one_is_one_error_line(tmp_path):
    blob_subjects(tmp_path, count=4)
    (tmp_path / "afile").write_text("the user's file")
    for output_dir in ("afile", "afile/sub"):
        config = write_config(tmp_path, {**TINY_RUN, "output_dir": output_dir})
        line = one_error_line(CliRunner().invoke(main, ["fit", str(config)]))
        assert f"{tmp_path / 'afile'} is a file, not a folder; set another output_dir" in line
    assert (tmp_path / "afile").read_text() == "the user's file"


def test_one_scan_under_two_ids_is_refused_unless_they_share_a_group(tmp_path):
    blob_subjects(tmp_path, count=6)
    table = tmp_path / "subjects.csv"
    table.write_text(table.read_text() + "x0,s0.nii.gz,s0_seg.nii.gz\n")
    config = write_config(tmp_path, TINY_RUN)
    line = one_error_line(CliRunner().invoke(main, ["check", str(config)]))
    assert "line 8 (subject x0): reads the same image file(s) as subject s0 on line 2" in line
    rows = table.read_text().splitlines()
    table.write_text("\n".join([rows[0] + ",patient"] + [f"{row},{row.split(',')[1][:2]}" for row in rows[1:]]) + "\n")
    grouped = write_config(tmp_path, changed(TINY_RUN, data__group_column="patient"), "grouped.yaml")
    assert CliRunner().invoke(main, ["check", str(grouped)]).exit_code == 0


def test_resume_refuses_a_subject_table_changed_since_the_run_began(tmp_path):
    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, changed(TINY_RUN, training__epochs=1))
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]).exit_code == 0
    table = tmp_path / "subjects.csv"
    rows = table.read_text().splitlines()
    table.write_text("\n".join(rows[:-1]) + "\n")                # a subject of the splits removed
    for args in (["--resume"], ["--fold", "2.1"]):
        line = one_error_line(CliRunner().invoke(main, ["fit", str(config), *args]))
        assert "subjects.csv has changed since the run in" in line


def test_resume_refuses_a_label_map_overwritten_since_the_run_began(tmp_path):
    """The table's bytes unchanged, a file it names mended in place: the folds would mix two
    datasets."""
    import os

    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, changed(TINY_RUN, training__epochs=1))
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]).exit_code == 0
    label = tmp_path / "s5_seg.nii.gz"
    later = label.stat().st_mtime + 5
    label.write_bytes((tmp_path / "s4_seg.nii.gz").read_bytes())
    os.utime(label, (later, later))
    for args in (["--resume"], ["--fold", "2.1"]):
        line = one_error_line(CliRunner().invoke(main, ["fit", str(config), *args]))
        assert "subjects.csv names has changed since the run in" in line and f"changed: {label} (" in line
    image = tmp_path / "s2.nii.gz"
    os.utime(image, (1e9, 1e9))                                     # its contents as they were, its time older
    line = one_error_line(CliRunner().invoke(main, ["fit", str(config), "--resume"]))
    assert f"{image} (modified 2001-09-09 01:46:40 then" not in line
    assert f"{image} (modified " in line and "2001-09-09 01:46:40 now (same size)" in line, line


def test_a_run_folder_moved_elsewhere_resumes_and_exports_and_so_does_one_hashed_with_its_folder(tmp_path):
    """The run folder's path is no part of the config's identity; a run whose run.json recorded the
    hash with it (as earlier versions did) resumes and exports where it is and once moved."""
    from export.from_run import read_run
    from trainer.config import config_hash, load_config

    blob_subjects(tmp_path, count=6)
    data = changed(TINY_RUN, training__epochs=1)
    config = write_config(tmp_path, data)
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]).exit_code == 0
    run_json = tmp_path / "run" / "run.json"
    record = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**record, "config_hash": config_hash(load_config(config), with_folder=True)}))
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.2"]).exit_code == 0
    assert [fold.fold_id for fold in read_run(tmp_path / "run").folds] == ["1.1", "1.2"]
    (tmp_path / "run").rename(tmp_path / "moved")                        # such a run moved: still the same run
    moved = write_config(tmp_path, changed(data, output_dir="moved"), "moved.yaml")
    assert CliRunner().invoke(main, ["fit", str(moved), "--fold", "2.1"]).exit_code == 0
    assert [fold.fold_id for fold in read_run(tmp_path / "moved").folds] == ["1.1", "1.2", "2.1"]
    coded = {"name": "blob", "type": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
             "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"}}
    codes = write_config(tmp_path, changed(data, output_dir="moved", data__classes={0: "background", 1: coded}),
                         "codes.yaml")                          # config.yaml takes the codes, keeps its folder
    assert CliRunner().invoke(main, ["fit", str(codes), "--fold", "2.2"]).exit_code == 0
    assert len(read_run(tmp_path / "moved").folds) == 4
    other = write_config(tmp_path, changed(data, output_dir="moved", seed=4), "other.yaml")
    assert "holds a run of a different config" in one_error_line(CliRunner().invoke(main, ["fit", str(other),
                                                                                        "--fold", "2.2"]))


def test_a_damaged_run_json_or_checkpoint_is_one_error_line(tmp_path):
    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, changed(TINY_RUN, training__epochs=1))
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]).exit_code == 0
    run = tmp_path / "run"
    good = (run / "run.json").read_text()
    (run / "run.json").write_text(good[: len(good) // 2])
    for args in (["fit", str(config), "--resume"], ["summary", str(run)]):
        assert "run.json cannot be read" in one_error_line(CliRunner().invoke(main, args))
    (run / "run.json").write_text(good)
    last = run / "folds" / "1.1" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    (run / "folds" / "1.1" / "result.json").unlink()
    line = one_error_line(CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1", "--resume"]))
    assert "last.pt cannot be resumed from" in line and "the checkpoint is damaged" in line


def test_weights_that_overflow_stop_the_fold_in_one_line(tmp_path, monkeypatch):
    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, changed(TINY_RUN, training__epochs=1))
    real_step = torch.optim.Adam.step

    def overflowing(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for parameter in group["params"]:
                    parameter.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", overflowing)
    line = one_error_line(CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]))
    assert "1.1: the" in line and ("are no longer finite after epoch 1" in line or "training loss became" in line)


def test_summary_says_which_folds_have_not_finished(tmp_path):
    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, changed(TINY_RUN, training__epochs=1))
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]).exit_code == 0
    result = CliRunner().invoke(main, ["summary", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "warning: 5 of the run's 6 folds have not finished (1.2, 2.1, 2.2, 3.1, 3.2)" in result.output


def test_writers_of_one_file_at_once_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "summary.csv"
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for _ in range(50):
                replace_text(target, json.dumps({"writer": index}) + "\n")
                json.loads(target.read_text())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_number_yaml_reads_as_text_says_how_to_write_it(tmp_path):
    blob_subjects(tmp_path, count=4)
    config = tmp_path / "config.yaml"
    write_config(tmp_path, TINY_RUN)
    config.write_text(config.read_text().replace("lr: 0.01", "lr: 1e-4"))
    result = CliRunner().invoke(main, ["check", str(config)])
    assert result.exit_code == 1 and "write 1.0e-4" in result.output, result.output


def test_a_fold_job_refused_before_training_says_its_folder_can_go_when_the_config_is_fixed(tmp_path):
    """A --fold job leaves the run's shared files for the others; refused before any fold trained
    (a label value that is no class), the fixed config meets them, and is told removing them loses
    nothing."""
    import SimpleITK as sitk

    blob_subjects(tmp_path, count=4)
    stray = sitk.ReadImage(str(tmp_path / "s1_seg.nii.gz"))
    values = sitk.GetArrayFromImage(stray)
    values[values == 1] = 7
    fixed = sitk.GetImageFromArray(values)
    fixed.CopyInformation(stray)
    sitk.WriteImage(fixed, str(tmp_path / "s1_seg.nii.gz"))
    data = changed(TINY_RUN, preprocessing=[], cross_validation={"testing_folds": 0, "validation_folds": 2})
    first = CliRunner().invoke(main, ["fit", str(write_config(tmp_path, data)), "--fold", "0.1"])
    assert first.exit_code == 1 and "holds value(s) [7]" in one_error_line(first)
    again = CliRunner().invoke(main, ["fit", str(write_config(tmp_path, changed(data, data__relabel={1: 1, 7: 1}))),
                                      "--fold", "0.1"])
    line = one_error_line(again)
    assert "holds a run of a different config" in line and "no fold of it has trained yet" in line, line


def test_a_run_met_again_with_codes_for_its_classes_keeps_them_for_export(tmp_path):
    """Codes and units change no training, so the run's hash stays; its config.yaml, which export
    reads the classes from, takes the new ones."""
    import SimpleITK as sitk
    import yaml

    blob_subjects(tmp_path, count=4)
    stray = sitk.ReadImage(str(tmp_path / "s1_seg.nii.gz"))
    values = sitk.GetArrayFromImage(stray)
    values[values == 1] = 7                                     # a value that is no class: refused before training
    fixed = sitk.GetImageFromArray(values)
    fixed.CopyInformation(stray)
    sitk.WriteImage(fixed, str(tmp_path / "s1_seg.nii.gz"))
    data = changed(TINY_RUN, preprocessing=[], cross_validation={"testing_folds": 0, "validation_folds": 2})
    assert CliRunner().invoke(main, ["fit", str(write_config(tmp_path, data)), "--fold", "0.1"]).exit_code == 1
    coded = {"name": "blob", "type": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"},
             "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"}}
    again = CliRunner().invoke(main, ["fit", str(write_config(tmp_path, changed(data, data__classes={
        0: "background", 1: coded}))), "--fold", "0.1"])
    assert "holds value(s) [7]" in one_error_line(again)          # the same run met: no "different config"
    kept = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert kept["data"]["classes"] == {0: "background", 1: coded}


def test_files_copied_without_their_times_resume_with_files_unchanged_and_changed_ones_never(tmp_path, caplog):
    """Files restored without their times: the user's word that they hold what they held is
    taken for the files whose time alone changed, and recorded; a file of another size never."""
    import os

    blob_subjects(tmp_path, count=6)
    config = write_config(tmp_path, changed(TINY_RUN, training__epochs=1))
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "1.1"]).exit_code == 0
    image, label = tmp_path / "s2.nii.gz", tmp_path / "s5_seg.nii.gz"
    os.utime(image, (1e9, 1e9))
    line = one_error_line(CliRunner().invoke(main, ["fit", str(config), "--resume"]))
    assert "restored without their times), run again with --files-unchanged; otherwise restore" in line, line
    original = label.read_bytes()
    label.write_bytes(original + b"\0")
    for args in (["--resume"], ["--resume", "--files-unchanged"]):
        line = one_error_line(CliRunner().invoke(main, ["fit", str(config), *args]))
        assert "--files-unchanged" not in line and f"{label} ({len(original)} bytes then" in line, line
    label.write_bytes(original)                                     # as it was, its time now another
    taken = CliRunner().invoke(main, ["fit", str(config), "--fold", "1.2", "--files-unchanged"])
    assert taken.exit_code == 0, taken.output
    assert f"2 file(s) {tmp_path / 'subjects.csv'} names have new modification times at their recorded sizes " \
        f"({image}, {label}); taken as unchanged (--files-unchanged)" in caplog.text
    recorded = json.loads((tmp_path / "run" / "files.json").read_text())
    assert recorded[str(image)] == [image.stat().st_size, image.stat().st_mtime_ns]
    assert CliRunner().invoke(main, ["fit", str(config), "--fold", "2.1"]).exit_code == 0     # recorded: no flag
