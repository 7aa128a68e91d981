"""The generated corpus of issue 16: training projects composed from parts, each with a
clean twin (label offset 1) and a bug twin (offset 2) and its ground truth, that
measure the recall and precision of the label rules. See README.md beside this file."""
