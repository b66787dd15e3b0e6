"""What the families say: their vocabulary and the paraphrased instruction templates of
the one-turn families (a template's {fields} are filled by its family's generator)."""

from __future__ import annotations

# ---------------------------------------------------------------------------- vocabulary

WORDS = tuple(
    """
    apple bread chair table house water light music paper pencil window door river stone
    cloud tiger maple orbit pixel candle harbor ember canyon falcon meadow copper lantern
    willow saddle garden mirror rocket forest basket bottle button camera carpet castle
    circle coffee cookie corner cotton desert dinner doctor dragon engine family farmer
    finger flower friend guitar hammer island jacket jungle kitten ladder lemon letter
    market monkey mother number ocean parrot pepper person pillow planet pocket rabbit
    ribbon salad school silver sister spring summer sunset ticket tomato travel turtle
    valley velvet wallet winter wizard anchor badge beach berry blade board brick brush
    cabin cable chain chalk cheese cherry clock coast coral crown dance dream eagle earth
    feast field flame frost ghost glass globe grape grass heart honey horse knife magic
    metal money night olive panel peach pearl piano pilot plant plate queen radio robot
    scale sheep shell shirt smile snake sound space spoon storm sugar tower train truck
    voice whale wheel wolf world zebra bird book cake coin deer dust farm fish frog gold
    hill king lamp leaf milk nest road rose ship star tree wave
    """.split()
)

CATEGORIES = {
    "fruit": "banana grape lemon mango pear melon kiwi apple fig papaya".split(),
    "animal": "tiger horse rabbit zebra sheep wolf mouse camel goat lion".split(),
    "color": "red blue green yellow purple black white brown pink gray".split(),
    "clothing": "shirt jacket scarf glove sock hat coat dress boot skirt".split(),
    "vehicle": "car bus truck train bike boat plane taxi tram van".split(),
    "body part": "hand foot nose knee elbow ear mouth neck chin thumb".split(),
}
NAMES = "Anna Ben Carl Dora Emma Finn Gina Hugo Ivan Jade Kate Leo Mia Nick Olga Paul".split()
MONTHS = (
    "January February March April May June July August September October November December"
).split()
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
VOWELS = "aeiou"
ACKS = ("OK.", "Got it.", "Noted.")

# ---------------------------------------------------------------------------- templates

TEMPLATES: dict[str, tuple[str, ...]] = {
    "reverse_word": (
        "Reverse the word {word}.",
        "Spell {word} backwards.",
        "Write {word} with its letters in reverse order.",
        "What is {word} reversed?",
        "Reverse the letters of {word}.",
    ),
    "uppercase": (
        "Write in capital letters: {text}",
        "Convert to uppercase: {text}",
        'Rewrite "{text}" in all caps.',
        "Make every letter uppercase: {text}",
    ),
    "lowercase": (
        "Write in lowercase letters: {text}",
        "Convert to lowercase: {text}",
        'Rewrite "{text}" with no capital letters.',
        "Make every letter lowercase: {text}",
    ),
    "title_case": (
        "Capitalize the first letter of each word: {text}",
        "Write in title case: {text}",
        "Convert to title case: {text}",
        'Start every word of "{text}" with a capital letter.',
    ),
    "add": (
        "What is {a} + {b}?",
        "Add {a} and {b}.",
        "What is the sum of {a} and {b}?",
        "Compute {a} plus {b}.",
        "{a} + {b} = ?",
    ),
    "subtract": (
        "What is {a} - {b}?",
        "Subtract {b} from {a}.",
        "What is {a} minus {b}?",
        "Compute the difference {a} - {b}.",
        "Take {b} away from {a}.",
    ),
    "multiply": (
        "What is {a} * {b}?",
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "What is the product of {a} and {b}?",
        "Compute {a} x {b}.",
    ),
    "larger_number": (
        "Which is larger, {a} or {b}?",
        "What is the bigger number: {a} or {b}?",
        "Give the larger of {a} and {b}.",
        "Of {a} and {b}, which number is greater?",
    ),
    "parity": (
        "Is {n} even or odd?",
        "Is the number {n} odd or even?",
        "Say whether {n} is even or odd.",
        "{n}: even or odd?",
    ),
    "sort_ascending": (
        "Sort from smallest to largest: {numbers}",
        "Put these numbers in ascending order: {numbers}",
        "Order these numbers from low to high: {numbers}",
        "Sort in increasing order: {numbers}",
    ),
    "sort_descending": (
        "Sort from largest to smallest: {numbers}",
        "Put these numbers in descending order: {numbers}",
        "Order these numbers from high to low: {numbers}",
        "Sort in decreasing order: {numbers}",
    ),
    "smallest_number": (
        "What is the smallest number in: {numbers}?",
        "Find the minimum of {numbers}.",
        "Which number is lowest: {numbers}?",
        "Give the smallest of these numbers: {numbers}",
    ),
    "count_letter": (
        "How many times does the letter {letter} appear in {word}?",
        "Count the letter {letter} in the word {word}.",
        "In the word {word}, how many times does {letter} occur?",
        "Count how often {letter} appears in {word}.",
    ),
    "count_words": (
        "How many words are in this text: {text}",
        "Count the words: {text}",
        'How many words does "{text}" contain?',
        "Give the number of words in: {text}",
    ),
    "first_letters": (
        "Write the first letter of each word: {text}",
        "Join the first letters of these words: {text}",
        "What do the first letters of {text} spell?",
        'Take the first letter of every word in "{text}" and join them.',
    ),
    "last_letters": (
        "Write the last letter of each word: {text}",
        "Join the last letters of these words: {text}",
        "What do the last letters of {text} spell?",
        'Take the last letter of every word in "{text}" and join them.',
    ),
    "nth_word": (
        "What is the {ordinal} word of: {text}",
        "Give word number {n} in: {text}",
        'In "{text}", which word comes {ordinal}?',
        "Which word is in position {n} of: {text}",
    ),
    "json_field": (
        'What is the value of "{key}" in {obj}?',
        "Given {obj}, what is {key}?",
        "Read the field {key} from this JSON: {obj}",
        "From the JSON {obj}, return the {key} value.",
    ),
    "date_format": (
        "Write {iso} in the form Month D, YYYY.",
        "Convert the date {iso} to month name, day and year, like May 7, 2020.",
        "Rewrite {iso} with the month spelled out, e.g. May 7, 2020.",
        "Express the date {iso} as Month D, YYYY.",
    ),
    "odd_one_out": (
        "Which word does not belong: {words}?",
        "Find the odd one out: {words}",
        "One of these is not like the others: {words}. Which one?",
        "Which word is from a different group: {words}?",
    ),
    "multi_step": (
        "Reverse the word {word}, then write it in capital letters.",
        "Spell {word} backwards in uppercase.",
        "Write {word} reversed and in all caps.",
        "Reverse {word} and convert the result to uppercase.",
    ),
    "remove_vowels": (
        "Remove the vowels from: {text}",
        "Delete every a, e, i, o and u in: {text}",
        "Write {text} without its vowels.",
        'Drop all vowels (a, e, i, o, u) from "{text}".',
    ),
    "repeat_word": (
        "Repeat the word {word} {n} times.",
        "Write {word} {n} times, separated by spaces.",
        "Say {word} {n} times in a row.",
        "Write the word {word} exactly {n} times.",
    ),
    "spell_out": (
        "Spell out {word} with dashes between the letters.",
        "Write the letters of {word} separated by dashes.",
        "Spell {word} letter by letter, joined by -.",
        "Split {word} into letters joined with dashes.",
    ),
    "contains_letter": (
        "Does the word {word} contain the letter {letter}?",
        "Is there a letter {letter} in {word}?",
        "Does {word} have the letter {letter} in it? Answer yes or no.",
        "Yes or no: is {letter} in the word {word}?",
    ),
    "alphabetical": (
        "Sort these words alphabetically: {words}",
        "Put in alphabetical order: {words}",
        "Arrange these words from A to Z: {words}",
        "List these words in dictionary order: {words}",
    ),
}
