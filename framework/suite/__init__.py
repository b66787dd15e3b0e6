"""A procedurally generated instruction suite: task families with exactly checkable answers,
paraphrased templates, single- and multi-turn chats, stable train / validation / test
splits, and families held out of training to measure zero-shot accuracy (FLAN style).

`families` defines the tasks and their checkers; `build` draws items and training chats.
"""
