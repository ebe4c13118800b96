"""`python -m train report` on a machine without the studies' runs (a clean clone): it must not wipe results."""

from pathlib import Path

from train.report import main


def test_report_keeps_study_sections_when_their_runs_are_not_here(tmp_path: Path):
    doc = tmp_path / "studies.md"
    doc.write_text("# Studies\n\n## Segmentation architecture study (automatic U-Net)\n\n| row | 0.622 |\n\n"
                   "## Does synthetic data help? (issue 15's experiment)\n\n| 0 % | 0.634 |\n")
    assert main(["--out", str(doc), "--seg-study", str(tmp_path / "none"),
                 "--classifier-study", str(tmp_path / "none"), "--weights", str(tmp_path / "no_weights")]) == 0
    text = doc.read_text()
    assert "| row | 0.622 |" in text and "| 0 % | 0.634 |" in text
    assert "No runs under" in text  # the classifier study had no section to keep: it says so


def test_report_keeps_sections_other_commands_wrote_in_their_place(tmp_path: Path):
    doc = tmp_path / "studies.md"
    doc.write_text("# Studies\n\n## Segmentation architecture study (automatic U-Net)\n\n| row | 0.622 |\n\n"
                   "## Segmentation on LiteMedSAM's pretrained encoder (issue 25)\n\n| auto-box | 0.864 |\n\n"
                   "## Does synthetic data help? (issue 15's experiment)\n\n| 0 % | 0.634 |\n")
    assert main(["--out", str(doc), "--seg-study", str(tmp_path / "none"),
                 "--classifier-study", str(tmp_path / "none"), "--weights", str(tmp_path / "no_weights")]) == 0
    text = doc.read_text()
    assert text.count("## Segmentation on LiteMedSAM's pretrained encoder") == 1 and "| auto-box | 0.864 |" in text
    # right after the section it followed, before the next one the generator writes
    assert text.index("| row | 0.622 |") < text.index("| auto-box | 0.864 |") < text.index("## Does synthetic data help?")
    assert main(["--out", str(doc), "--seg-study", str(tmp_path / "none"),
                 "--classifier-study", str(tmp_path / "none"), "--weights", str(tmp_path / "no_weights")]) == 0
    assert doc.read_text() == text  # a second run changes nothing
