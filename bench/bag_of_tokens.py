"""What a classification task gives away to a model that only counts tokens: a logistic regression (scikit-learn)
on bag-of-token counts of the training rows, scored on the first eval split, with three vocabularies: the
tokenizer's BPE pieces, whole words (identifiers split at non-word characters), and character 3-5-grams. A task
where these stay near chance cannot be solved by matching what the fine-tuning rows show.

    python bench/bag_of_tokens.py yamls/finetune/sample-module.yaml --tokenizer data/sample/tokenizer
"""

from __future__ import annotations

import argparse
import json

from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from bertforge.data.tokenizer import load_tokenizer
from bertforge.finetune.config import load_task
from bertforge.finetune.tasks import read_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="a classification task YAML")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer whose pieces are counted")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args()
    task = load_task(args.task)
    field, label = task.data.text_fields[0], task.data.label_field
    train, test = read_rows(task, task.data.train_split), read_rows(task, task.data.eval_splits[0])
    tokenizer = load_tokenizer(args.tokenizer)
    vocabularies = {
        "BPE pieces": CountVectorizer(analyzer=lambda text: tokenizer.tokenize(text)),
        "whole words": CountVectorizer(token_pattern=r"\w+", lowercase=False),
        "character 3-5-grams": CountVectorizer(analyzer="char_wb", ngram_range=(3, 5)),
    }
    scores = {"task": task.name, "train_rows": len(train), "eval_rows": len(test),
              "chance": 1 / len(task.head.labels), "majority": max(
                  sum(1 for y in test[label] if y == c) for c in set(test[label])) / len(test)}
    for name, vectorizer in vocabularies.items():
        features = vectorizer.fit_transform(train[field])
        model = LogisticRegression(max_iter=2000, C=1.0).fit(features, train[label])
        scores[name] = accuracy_score(test[label], model.predict(vectorizer.transform(test[field])))
    print(f"{task.name}: {len(train)} training rows, {len(test)} scored; chance {100 * scores['chance']:.1f}%, "
          f"majority class {100 * scores['majority']:.1f}%")
    for name in vocabularies:
        print(f"  bag of {name:20} accuracy {100 * scores[name]:.1f}%")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(scores, handle, indent=1)


if __name__ == "__main__":
    main()
