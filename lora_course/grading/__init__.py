"""The classroom grader: score a folder of submitted exercise notebooks (README, "For instructors").

python -m lora_course.grading SUBMISSIONS/ --out grades.csv [--jobs N] [--shard i/n] [--seed S]
python -m lora_course.grading --merge shard1.csv shard2.csv ... --out grades.csv

Each submission runs in a bubblewrap sandbox (sandbox.py), from a copy: the file itself is never
modified. Inside, the runner (runner.py) executes the student's code cells (a failing or looping
cell does not stop the run; the student's own check cells are skipped) and then calls the
student's objects on cases the grader chose: each exercise's visible case (1 point) and an
instructor-only variant drawn from the seed (1 point). What they return comes out as data
(observations.py); the grader judges it in its own process with the same judges as the learners'
checks (lora_course.checks), so nothing a submission patches can change a verdict.
"""

from .grader import Grade, Options, grade_file, grade_folder, merge_csv, report, write_csv

__all__ = ["Grade", "Options", "grade_file", "grade_folder", "merge_csv", "report", "write_csv"]
