"""Word statistics."""


def count_words(text):
    """The number of words in `text` (words are separated by any whitespace)."""
    return len([word for word in text.split(" ") if word])


def longest_word(text):
    """The longest word of `text` ('' for none)."""
    return max(text.split(), key=len, default="")
