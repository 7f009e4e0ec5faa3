"""`jetvit push DIR REPO [--private] [--revision BRANCH] [--message TEXT]`: upload a saved hybrid to the Hugging Face
Hub.

DIR is a folder written by `jetvit.save` (a run's `model/`): weights, config with provenance, the modeling code that
loads it without jetvit, the image-processor config and, for a run's model, the model card. REPO (`user/name`) is
created when missing. Needs `huggingface_hub` (`pip install 'jetvit[hub]'`) and a token (`hf auth login` or
`HF_TOKEN`). Load it back with `jetvit.load("user/name")` or `AutoModel.from_pretrained("user/name",
trust_remote_code=True)`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a folder written by jetvit.save (e.g. a run's model/)")
    parser.add_argument("repo", metavar="REPO", help="the Hub repository, user/name (created when missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", metavar="BRANCH", help="the branch to commit to (default: main)")
    parser.add_argument("--message", metavar="TEXT", help="the commit message (default: 'jetvit hybrid ARCH')")


def run(args: argparse.Namespace) -> int:
    from jetvit.hub import push

    url = push(args.dir, args.repo, private=args.private, revision=args.revision, commit_message=args.message)
    print(f"pushed {args.dir} to {args.repo}: {url}")
    return 0
