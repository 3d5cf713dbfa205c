"""A small module of everyday Python, held out from training, to measure perplexity on."""

import json
import os
from collections import Counter
from pathlib import Path


def read_lines(path):
    """Return the lines of a text file, without their line endings."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def word_counts(lines):
    """Count how often each word occurs in the lines."""
    counts = Counter()
    for line in lines:
        for word in line.split():
            counts[word.lower()] += 1
    return counts


def save_counts(counts, path):
    """Write the counts as JSON, the most common first."""
    ordered = dict(counts.most_common())
    Path(path).write_text(json.dumps(ordered, indent=2), encoding="utf-8")


class Inventory:
    """Items and how many of each are in stock."""

    def __init__(self):
        self.items = {}

    def add(self, name, count=1):
        if count < 0:
            raise ValueError("count must not be negative")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count=1):
        have = self.items.get(name, 0)
        if count > have:
            raise KeyError(f"only {have} of {name} in stock")
        self.items[name] = have - count

    def total(self):
        return sum(self.items.values())


def main():
    folder = os.environ.get("DATA", ".")
    lines = read_lines(os.path.join(folder, "input.txt"))
    save_counts(word_counts(lines), os.path.join(folder, "counts.json"))


if __name__ == "__main__":
    main()
