"""Generate the tiny datasets shipped with the package (seeded, deterministic, stdlib only).

Regenerate the shipped files exactly (same bytes on every run and machine):

    python scripts/make_tiny_datasets.py --out-dir nemotron_core/assets/data --seed 1234 \
        --n-chat 3000 --n-text 4000 --n-rl 500

Everything is made from templates and small vocabularies in this file (no external text), so a tiny
model (hidden 128, 12 layers) can visibly learn the patterns in about a hundred steps.

Files and record schemas
------------------------
tiny_chat.jsonl  (SFT; OpenAI chat format, one conversation per line)
    {"messages": [...], "tools": [...]}            "tools" omitted when no tools are declared
    message roles: "system" | "user" | "assistant" | "tool"
    assistant: {"role", "content": str, "reasoning_content"?: str,
                "tool_calls"?: [{"type": "function", "id": "call_...",
                                 "function": {"name": str, "arguments": dict | JSON str}}]}
    tool:      {"role": "tool", "tool_call_id": <id of an earlier call>, "content": str}
    tools:     [{"type": "function", "function": {"name", "description",
                 "parameters": {"type": "object", "properties": {arg: {"type", "description"}},
                                "required": [...]}}}]
    Coverage: no system / empty system / system variants; 1-4 user turns (a few long ones more);
    ~40% with reasoning (often on several assistant turns); ~25% with tools (single call, two
    parallel calls answered by two consecutive tool messages, multi-step call loops, tools declared
    but not needed); ~20% of tool-call arguments are JSON strings; empty assistant content only on
    tool-call turns; a long tail (long lists, long sums, many turns). Every conversation ends with an
    assistant message. No literal "<tool_call>" text anywhere.

tiny_text.jsonl  (pretraining; {"text": str} per line)
    Facts about countries, little stories, arithmetic tables, lists, unit facts, weather reports,
    Q/A drills and short Python snippets, of varied length.

tiny_rl.jsonl  (RL prompts with verifiable answers, one per line)
    {"prompt": [{"role": "user", "content": str}], "answer": str, "task": str}
    prompt:  the chat messages to generate from (a single user turn).
    task:    "math"            integer arithmetic / word problems; answer is the exact integer, e.g. "-42"
             "multiple_choice" four options A-D; answer is one letter "A".."D"
             "json"            build a flat JSON object; answer is json.dumps(obj, sort_keys=True)
    Every prompt asks for the result on a last line "Answer: <answer>". The RL reward extracts the
    final answer (the text after the last "Answer:", stripped) and rewards an exact string match
    with "answer" (for "json", after parsing both and re-dumping with sort_keys=True).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

# fmt: off
# country -> (capital, continent)
COUNTRIES = {
    "France": ("Paris", "Europe"), "Germany": ("Berlin", "Europe"), "Italy": ("Rome", "Europe"),
    "Spain": ("Madrid", "Europe"), "Portugal": ("Lisbon", "Europe"), "Norway": ("Oslo", "Europe"),
    "Sweden": ("Stockholm", "Europe"), "Finland": ("Helsinki", "Europe"),
    "Denmark": ("Copenhagen", "Europe"), "Poland": ("Warsaw", "Europe"), "Austria": ("Vienna", "Europe"),
    "Greece": ("Athens", "Europe"), "Ireland": ("Dublin", "Europe"), "Hungary": ("Budapest", "Europe"),
    "Belgium": ("Brussels", "Europe"), "Netherlands": ("Amsterdam", "Europe"),
    "Czechia": ("Prague", "Europe"), "Japan": ("Tokyo", "Asia"), "China": ("Beijing", "Asia"),
    "India": ("New Delhi", "Asia"), "Thailand": ("Bangkok", "Asia"), "Vietnam": ("Hanoi", "Asia"),
    "Indonesia": ("Jakarta", "Asia"), "South Korea": ("Seoul", "Asia"), "Philippines": ("Manila", "Asia"),
    "Nepal": ("Kathmandu", "Asia"), "Egypt": ("Cairo", "Africa"), "Kenya": ("Nairobi", "Africa"),
    "Nigeria": ("Abuja", "Africa"), "Ghana": ("Accra", "Africa"), "Morocco": ("Rabat", "Africa"),
    "Ethiopia": ("Addis Ababa", "Africa"), "Senegal": ("Dakar", "Africa"),
    "Peru": ("Lima", "South America"), "Chile": ("Santiago", "South America"),
    "Argentina": ("Buenos Aires", "South America"), "Colombia": ("Bogota", "South America"),
    "Brazil": ("Brasilia", "South America"), "Ecuador": ("Quito", "South America"),
    "Canada": ("Ottawa", "North America"), "Mexico": ("Mexico City", "North America"),
    "Cuba": ("Havana", "North America"), "Australia": ("Canberra", "Oceania"),
    "New Zealand": ("Wellington", "Oceania"),
}
EXTRA_CITIES = [
    "Toronto", "Sydney", "Osaka", "Munich", "Milan", "Barcelona", "Lyon", "Hamburg", "Porto", "Bergen",
    "Mumbai", "Shanghai", "Cape Town", "Chicago", "Seattle",
]
CITIES = sorted({c for c, _ in COUNTRIES.values()} | set(EXTRA_CITIES))
CONDITIONS = [
    "sunny", "cloudy", "rainy", "windy", "foggy", "snowy", "partly cloudy", "stormy",
]

# unit -> (singular, plural); CONVERSIONS are (from, to, integer factor)
UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "l": ("liter", "liters"), "ml": ("milliliter", "milliliters"), "h": ("hour", "hours"),
    "min": ("minute", "minutes"), "s": ("second", "seconds"), "day": ("day", "days"),
    "week": ("week", "weeks"),
}
CONVERSIONS = [
    ("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("kg", "g", 1000), ("l", "ml", 1000),
    ("h", "min", 60), ("min", "s", 60), ("day", "h", 24), ("week", "day", 7),
]

WORDS = [
    "apple", "banana", "cherry", "garden", "planet", "rocket", "window", "pencil", "river", "mountain",
    "kitten", "puppy", "letter", "bottle", "yellow", "purple", "summer", "winter", "market", "button",
    "coffee", "butter", "carrot", "dragon", "forest", "guitar", "island", "jungle", "ladder", "mirror",
    "orange", "parrot", "rabbit", "silver", "tomato", "turtle", "violin", "wizard", "zebra", "balloon",
    "bicycle", "blanket", "cookie", "dolphin", "elephant", "feather", "giraffe", "hammer", "lantern",
    "mango", "noodle", "octopus", "pebble", "pillow", "pumpkin", "saddle", "teapot", "tunnel", "umbrella",
    "whistle", "library", "mission", "banner", "cottage", "meadow", "harbor", "sparrow", "biscuit",
]
NAMES = [
    "Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Iris", "Jack", "Kira", "Leo", "Maya",
    "Nico", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wren", "Yuki", "Zoe",
    "Alice", "Omar", "Lena", "Ravi", "Mia",
]
ANIMALS = [
    "cat", "dog", "fox", "owl", "bear", "rabbit", "turtle", "horse", "duck", "mouse", "frog", "goat",
    "squirrel", "hedgehog", "otter",
]
PLACES = [
    "the forest", "the village", "the beach", "the old library", "the market", "the hill",
    "the river bank", "the school", "the garden", "the harbor", "the meadow", "the castle",
]
OBJECTS = [
    "a red ball", "a small key", "a blue kite", "a lost map", "a shiny coin", "an old book",
    "a wooden box", "a paper boat", "a green hat", "a silver bell", "a warm scarf",
]
ADJECTIVES = [
    "happy", "curious", "brave", "sleepy", "kind", "clever", "quiet", "busy", "tiny", "gentle", "lucky",
    "careful",
]
COUNTABLE = [
    "apples", "eggs", "tomatoes", "carrots", "oranges", "lemons", "cookies", "marbles", "stickers",
    "pencils", "books", "shells", "cards", "balloons",
]
PACK_ITEMS = [
    "a toothbrush", "socks", "a raincoat", "a map", "a water bottle", "sunglasses", "a book",
    "a phone charger", "a sweater", "snacks", "a camera", "an umbrella", "a hat", "tickets", "a notebook",
    "sandals", "a towel", "a small pillow",
]
FOODS = [
    "apples", "bread", "milk", "eggs", "rice", "cheese", "tomatoes", "carrots", "onions", "butter",
    "beans", "pasta", "honey", "oranges", "yogurt", "flour", "tea", "lemons",
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "You are a friendly assistant. Keep answers short and correct.",
    "You are a careful math tutor. Show the result clearly.",
    "You are a concise assistant that answers with facts.",
    "You are a helpful assistant. Think step by step before answering.",
    "You are a helpful assistant that can call tools when they are useful.",
    "Be brief.",
]

OPS = {
    "+": ("plus", "add", "sum"),
    "-": ("minus", "subtract", "difference"),
    "*": ("times", "multiply", "product"),
}
# fmt: on

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def join_and(items: list[str]) -> str:
    items = [str(x) for x in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def arith_steps(a: int, op: str, b: int) -> str:
    """A short, correct step-by-step derivation of a op b."""
    c = apply(a, op, b)
    if op == "*":
        tens, ones = (a // 10) * 10, a % 10
        if tens and ones:
            return (
                f"Split {a} into {tens} and {ones}. {tens} * {b} = {tens * b} and {ones} * {b} = "
                f"{ones * b}. Then {tens * b} + {ones * b} = {c}."
            )
        return f"{a} * {b} = {c}."
    big, rest = (b // 100) * 100, b % 100
    if big and rest:
        mid = apply(a, op, big)
        return f"First {a} {op} {big} = {mid}. Then {mid} {op} {rest} = {c}."
    return f"{a} {op} {b} = {c}."


class Ids:
    """Deterministic tool-call ids, unique within a conversation."""

    def __init__(self, rng: random.Random):
        self.rng, self.seen = rng, set()

    def new(self) -> str:
        while True:
            i = "call_" + "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
            if i not in self.seen:
                self.seen.add(i)
                return i


# ---------------------------------------------------------------------------------------------
# Chat: plain (no tool) tasks. Each returns (user, answer, reasoning, number_or_None).
# ---------------------------------------------------------------------------------------------


def task_arith(rng: random.Random, long: bool = False):
    if long:
        nums = [rng.randint(1, 99) for _ in range(rng.randint(25, 60))]
        total, steps = 0, []
        for n in nums:
            steps.append(f"{total} + {n} = {total + n}.")
            total += n
        user = rng.choice(
            ["Add up these numbers: ", "What is the sum of these numbers? ", "Please compute the total of: "]
        ) + ", ".join(map(str, nums))
        reasoning = "I add them one at a time. " + " ".join(steps) + f" The total is {total}."
        answer = f"The sum of the {len(nums)} numbers is {total}."
        return user, answer, reasoning, total
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 99), rng.randint(2, 12)
    else:
        a, b = rng.randint(1, 999), rng.randint(1, 999)
    c = apply(a, op, b)
    word, verb, noun = OPS[op]
    user = rng.choice(
        [
            f"What is {a} {op} {b}?",
            f"Compute {a} {op} {b}.",
            f"Calculate {a} {op} {b}, please.",
            f"What is {a} {word} {b}?",
            f"What is the {noun} of {a} and {b}?" if op != "-" else f"What is {a} minus {b}?",
            f"Quick question: {a} {op} {b} = ?",
        ]
    )
    answer = rng.choice(
        [
            f"{a} {op} {b} = {c}.",
            f"The answer is {c}.",
            f"{a} {word} {b} is {c}.",
            f"{a} {op} {b} = {c}. The answer is {c}.",
        ]
    )
    reasoning = f"The user wants {a} {op} {b}. " + arith_steps(a, op, b) + f" So the answer is {c}."
    return user, answer, reasoning, c


def task_followup(rng: random.Random, prev: int):
    op = rng.choice("+-*")
    k = rng.randint(2, 9) if op == "*" else rng.randint(1, 99)
    c = apply(prev, op, k)
    word, verb, _ = OPS[op]
    user = rng.choice(
        {
            "+": [f"Now add {k} to that.", f"And if I add {k}?", f"Add {k} to the result."],
            "-": [
                f"Now subtract {k} from that.",
                f"And if I take away {k}?",
                f"Subtract {k} from the result.",
            ],
            "*": [f"Now multiply that by {k}.", f"And times {k}?", f"Multiply the result by {k}."],
        }[op]
    )
    answer = rng.choice([f"{prev} {op} {k} = {c}.", f"That gives {c}.", f"{prev} {word} {k} is {c}."])
    reasoning = f"The previous result was {prev}. " + arith_steps(prev, op, k) + f" The new result is {c}."
    return user, answer, reasoning, c


def task_units(rng: random.Random, long: bool = False):
    src, dst, f = rng.choice(CONVERSIONS)
    if rng.random() < 0.3:  # the other direction, exact division
        src, dst = dst, src
        n = rng.randint(1, 50) * f
        v = n // f
        why = f"There are {f} {UNITS[src][1]} in one {UNITS[dst][0]}. {n} / {f} = {v}."
    else:
        n = rng.randint(1, 120)
        v = n * f
        why = f"One {UNITS[src][0]} is {f} {UNITS[dst][1]}. {n} * {f} = {v}."
    sn, dn = plural(n, *UNITS[src]), plural(v, *UNITS[dst])
    user = rng.choice(
        [
            f"Convert {n} {sn} to {UNITS[dst][1]}.",
            f"How many {UNITS[dst][1]} are in {n} {sn}?",
            f"{n} {sn} is how many {UNITS[dst][1]}?",
        ]
    )
    answer = rng.choice([f"{n} {sn} is {v} {dn}.", f"That is {v} {dn}.", f"{n} {sn} = {v} {dn}."])
    return user, answer, why + f" So {n} {sn} is {v} {dn}.", v


def task_sort(rng: random.Random, long: bool = False):
    n = rng.randint(40, 120) if long else rng.randint(3, 9)
    if rng.random() < 0.7:
        items = [rng.randint(0, 999 if long else 99) for _ in range(n)]
        desc = rng.random() < 0.3
        order = "descending" if desc else "ascending"
        out = sorted(items, reverse=desc)
        user = rng.choice(
            [
                f"Sort these numbers in {order} order: ",
                f"Put these numbers in {order} order: ",
                f"Please sort ({order}): ",
            ]
        ) + ", ".join(map(str, items))
        reasoning = (
            f"There are {n} numbers. The smallest is {min(items)} and the largest is {max(items)}. "
            f"In {order} order they are: " + ", ".join(map(str, out)) + "."
        )
    else:
        items = rng.sample(WORDS, min(n, len(WORDS)))
        out = sorted(items)
        user = rng.choice(
            ["Sort these words alphabetically: ", "Put these words in alphabetical order: "]
        ) + ", ".join(items)
        reasoning = (
            f"I order the {len(items)} words by their first letters: "
            + ", ".join(f"{w} ({w[0]})" for w in out)
            + "."
        )
    answer = rng.choice(["Sorted: ", "Here they are in order: ", ""]) + ", ".join(map(str, out))
    return user, answer, reasoning, None


def task_count(rng: random.Random, long: bool = False):
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("qxjvz")
    k = word.count(letter)
    pos = [str(i + 1) for i, ch in enumerate(word) if ch == letter]
    user = rng.choice(
        [
            f"How many times does the letter '{letter}' appear in '{word}'?",
            f"Count the letter {letter} in the word {word}.",
            f"How many {letter}'s are in {word}?",
        ]
    )
    answer = rng.choice(
        [
            f"The letter '{letter}' appears {k} {plural(k, 'time', 'times')} in '{word}'.",
            f"There {plural(k, 'is', 'are')} {k} '{letter}' in {word}.",
        ]
    )
    spelled = "-".join(word)
    found = (
        f"The letter '{letter}' is at {plural(len(pos), 'position', 'positions')} {join_and(pos)}."
        if pos
        else f"The letter '{letter}' does not appear."
    )
    reasoning = f"Spell it out: {spelled}. {found} That is {k}."
    return user, answer, reasoning, k


def task_reverse(rng: random.Random, long: bool = False):
    if rng.random() < 0.5:
        n = rng.randint(30, 70) if long else rng.randint(3, 8)
        words = [rng.choice(WORDS) for _ in range(n)]
        user = rng.choice(
            ["Reverse the order of the words: ", "Write these words in reverse order: "]
        ) + " ".join(words)
        out = " ".join(reversed(words))
        reasoning = (
            f"There are {n} words. The last word is '{words[-1]}' and the first is '{words[0]}'. "
            f"Reading from the end: {out}."
        )
        answer = out
    else:
        word = rng.choice(WORDS)
        user = rng.choice(
            [
                f"Spell '{word}' backwards.",
                f"Reverse the letters of {word}.",
                f"What is {word} written backwards?",
            ]
        )
        out = word[::-1]
        reasoning = f"The letters are {', '.join(word)}. Backwards: {', '.join(out)}."
        answer = rng.choice([f"'{word}' backwards is '{out}'.", out])
    return user, answer, reasoning, None


def task_capital(rng: random.Random, long: bool = False):
    country = rng.choice(sorted(COUNTRIES))
    cap, cont = COUNTRIES[country]
    user = rng.choice(
        [
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Tell me the capital of {country}.",
        ]
    )
    answer = rng.choice(
        [f"The capital of {country} is {cap}.", f"{cap}.", f"{cap} is the capital of {country}."]
    )
    reasoning = f"{country} is a country in {cont}. Its capital city is {cap}."
    return user, answer, reasoning, None


def task_smalltalk(rng: random.Random, long: bool = False):
    user, answer = rng.choice(
        [
            ("Hello!", "Hello! How can I help you today?"),
            ("Hi there.", "Hi! What would you like to know?"),
            ("Good morning!", "Good morning! How can I help?"),
            (
                "Who are you?",
                "I am a small assistant. I can do arithmetic, convert units, sort lists and answer simple questions.",
            ),
            (
                "What can you do?",
                "I can add and multiply numbers, convert units, sort lists, count letters and name capitals.",
            ),
        ]
    )
    return user, answer, "The user is greeting me. I should greet back and offer help.", None


def task_thanks(rng: random.Random):
    user, answer = rng.choice(
        [
            ("Thanks!", "You're welcome!"),
            ("Thank you.", "Glad I could help."),
            ("Great, thanks.", "Happy to help. Anything else?"),
            ("Perfect.", "Good to hear!"),
        ]
    )
    return user, answer, "The user is thanking me. A short reply is enough.", None


PLAIN_TASKS = [
    (task_arith, 5),
    (task_units, 3),
    (task_sort, 3),
    (task_count, 3),
    (task_reverse, 3),
    (task_capital, 3),
    (task_smalltalk, 1),
]
LONG_TASKS = [task_arith, task_sort, task_reverse]


def pick(rng: random.Random, weighted):
    total = sum(w for _, w in weighted)
    x = rng.random() * total
    for item, w in weighted:
        x -= w
        if x < 0:
            return item
    return weighted[-1][0]


# ---------------------------------------------------------------------------------------------
# Chat: tools
# ---------------------------------------------------------------------------------------------


def fn(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": t, "description": d} for k, (t, d) in props.items()},
                "required": required,
            },
        },
    }


TOOL_DECLS = {
    "get_capital": fn(
        "get_capital",
        "Get the capital city of a country.",
        {"country": ("string", "Name of the country, e.g. France")},
        ["country"],
    ),
    "get_weather": fn(
        "get_weather",
        "Get the weather forecast for a city for the given days ahead.",
        {
            "city": ("string", "Name of the city"),
            "days": ("array", "Days ahead to forecast, e.g. [1, 2] for tomorrow and the day after"),
            "unit": ("string", "Temperature unit: celsius or fahrenheit"),
        },
        ["city", "days"],
    ),
    "get_forecast": fn(
        "get_forecast",
        "Weather forecast for a location.",
        {
            "location": ("string", "City name"),
            "num_days": ("integer", "Number of days to forecast, starting tomorrow"),
        },
        ["location", "num_days"],
    ),
    "calculator": fn(
        "calculator",
        "Evaluate an arithmetic expression with integers and + - * ( ).",
        {"expression": ("string", "The expression, e.g. (3 + 4) * 5")},
        ["expression"],
    ),
    "calculate": fn(
        "calculate",
        "Apply one arithmetic operation to two integers.",
        {
            "operation": ("string", "One of add, subtract, multiply"),
            "a": ("integer", "First operand"),
            "b": ("integer", "Second operand"),
        },
        ["operation", "a", "b"],
    ),
    "convert_units": fn(
        "convert_units",
        "Convert a quantity from one unit to another.",
        {
            "value": ("number", "The quantity to convert"),
            "from_unit": ("string", "Unit of the value, e.g. km"),
            "to_unit": ("string", "Target unit, e.g. m"),
        },
        ["value", "from_unit", "to_unit"],
    ),
    "count_letters": fn(
        "count_letters",
        "Count how often a letter occurs in a word.",
        {"word": ("string", "The word to search"), "letter": ("string", "A single letter")},
        ["word", "letter"],
    ),
    "sort_list": fn(
        "sort_list",
        "Sort a list of numbers.",
        {
            "items": ("array", "The numbers to sort"),
            "descending": ("boolean", "Sort from largest to smallest when true"),
        },
        ["items"],
    ),
}


def weather_tool(rng: random.Random) -> str:
    return "get_weather" if rng.random() < 0.65 else "get_forecast"


def calc_tool(rng: random.Random) -> str:
    return "calculator" if rng.random() < 0.6 else "calculate"


class ToolChat:
    """Builds one tool-using exchange: calls, results and the final answer."""

    def __init__(self, rng: random.Random, ids: Ids, reasoning: bool):
        self.rng, self.ids, self.reasoning = rng, ids, reasoning
        self.used: set[str] = set()

    def call(self, name: str, args: dict) -> dict:
        self.used.add(name)
        as_str = self.rng.random() < 0.2
        return {
            "type": "function",
            "id": self.ids.new(),
            "function": {"name": name, "arguments": json.dumps(args) if as_str else args},
        }

    def assistant_calls(self, calls: list[dict], why: str) -> dict:
        msg = {"role": "assistant"}
        if self.reasoning:
            msg["content"] = self.rng.choice(["", "", "", "Let me check."])
            msg["reasoning_content"] = why
        else:
            msg["content"] = self.rng.choice(["", "Let me look that up.", "One moment.", ""])
        msg["tool_calls"] = calls
        return msg

    @staticmethod
    def result(call: dict, content: str) -> dict:
        return {"role": "tool", "tool_call_id": call["id"], "content": content}

    def final(self, answer: str, why: str) -> dict:
        msg = {"role": "assistant", "content": answer}
        if self.reasoning and self.rng.random() < 0.8:
            msg["reasoning_content"] = why
        return msg

    # -- tool helpers: (call, result text, data) -------------------------------------------------

    def capital(self, country: str):
        cap = COUNTRIES[country][0]
        c = self.call("get_capital", {"country": country})
        text = cap if self.rng.random() < 0.5 else json.dumps({"country": country, "capital": cap})
        return c, text, cap

    def weather(self, city: str, ndays: int):
        name = weather_tool(self.rng)
        days = list(range(1, ndays + 1))
        if name == "get_weather":
            args = {"city": city, "days": days}
            if self.rng.random() < 0.3:
                args["unit"] = "celsius"
        else:
            args = {"location": city, "num_days": ndays}
        c = self.call(name, args)
        fc = [
            {"day": d, "temp_c": self.rng.randint(-5, 35), "condition": self.rng.choice(CONDITIONS)}
            for d in days
        ]
        return c, json.dumps({"city": city, "forecast": fc}), fc

    def calc(self, a: int, op: str, b: int):
        name = calc_tool(self.rng)
        if name == "calculator":
            args = {"expression": f"{a} {op} {b}"}
        else:
            args = {"operation": OPS[op][1], "a": a, "b": b}
        c = self.call(name, args)
        v = apply(a, op, b)
        return c, str(v), v

    def convert(self, n: int, src: str, dst: str, f: int):
        c = self.call("convert_units", {"value": n, "from_unit": src, "to_unit": dst})
        v = n * f
        text = json.dumps({"value": v, "unit": dst}) if self.rng.random() < 0.5 else f"{v} {dst}"
        return c, text, v


def describe_forecast(city: str, fc: list[dict]) -> str:
    parts = [f"day {d['day']}: {d['condition']}, {d['temp_c']}C" for d in fc]
    return f"Forecast for {city}: " + "; ".join(parts) + "."


def tool_exchange(rng: random.Random, tc: ToolChat, long: bool = False):
    """One user turn answered with tools. Returns (user, [assistant/tool messages ...])."""
    kind = pick(rng, [("single", 4), ("parallel", 2), ("loop", 2)])
    msgs: list[dict] = []
    if kind == "single":
        sub = rng.choice(["capital", "weather", "calc", "convert", "count", "sort"])
        if sub == "capital":
            country = rng.choice(sorted(COUNTRIES))
            c, text, cap = tc.capital(country)
            user = rng.choice([f"What is the capital of {country}?", f"Look up the capital of {country}."])
            msgs += [
                tc.assistant_calls(
                    [c], f"The user asks for the capital of {country}. I will call get_capital."
                ),
                tc.result(c, text),
                tc.final(f"The capital of {country} is {cap}.", f"The tool says the capital is {cap}."),
            ]
        elif sub == "weather":
            city, nd = rng.choice(CITIES), (rng.randint(5, 7) if long else rng.randint(1, 3))
            c, text, fc = tc.weather(city, nd)
            user = rng.choice(
                [
                    f"What will the weather be in {city} for the next {nd} {plural(nd, 'day', 'days')}?",
                    f"Weather forecast for {city}, {nd} {plural(nd, 'day', 'days')} please.",
                ]
            )
            msgs += [
                tc.assistant_calls(
                    [c], f"I need a {nd}-day forecast for {city}. I will call the weather tool."
                ),
                tc.result(c, text),
                tc.final(
                    describe_forecast(city, fc),
                    f"The tool returned {nd} {plural(nd, 'day', 'days')} of forecast for {city}.",
                ),
            ]
        elif sub == "calc":
            op = rng.choice("+-*")
            a, b = rng.randint(100, 9999), rng.randint(2, 999)
            c, text, v = tc.calc(a, op, b)
            user = rng.choice(
                [f"Use the calculator: what is {a} {op} {b}?", f"Calculate {a} {op} {b} exactly."]
            )
            msgs += [
                tc.assistant_calls(
                    [c], f"These numbers are large, so I will use the calculator for {a} {op} {b}."
                ),
                tc.result(c, text),
                tc.final(f"{a} {op} {b} = {v}.", f"The calculator returned {v}."),
            ]
        elif sub == "convert":
            src, dst, f = rng.choice(CONVERSIONS)
            n = rng.randint(1, 500)
            c, text, v = tc.convert(n, src, dst, f)
            user = f"Convert {n} {plural(n, *UNITS[src])} to {UNITS[dst][1]}."
            msgs += [
                tc.assistant_calls([c], f"I will convert {n} {src} to {dst} with convert_units."),
                tc.result(c, text),
                tc.final(
                    f"{n} {plural(n, *UNITS[src])} is {v} {plural(v, *UNITS[dst])}.",
                    f"The tool says {v} {dst}.",
                ),
            ]
        elif sub == "count":
            word = rng.choice(WORDS)
            letter = rng.choice(word)
            k = word.count(letter)
            c = tc.call("count_letters", {"word": word, "letter": letter})
            user = f"Use the tool to count the letter '{letter}' in '{word}'."
            msgs += [
                tc.assistant_calls([c], f"I will call count_letters with word {word} and letter {letter}."),
                tc.result(c, str(k)),
                tc.final(
                    f"The letter '{letter}' appears {k} {plural(k, 'time', 'times')} in '{word}'.",
                    f"The tool returned {k}.",
                ),
            ]
        else:
            items = [rng.randint(0, 999) for _ in range(rng.randint(40, 100) if long else rng.randint(4, 10))]
            desc = rng.random() < 0.3
            args = {"items": items, "descending": True} if desc else {"items": items}
            c = tc.call("sort_list", args)
            out = sorted(items, reverse=desc)
            user = f"Sort {'from largest to smallest' if desc else 'from smallest to largest'}: " + ", ".join(
                map(str, items)
            )
            msgs += [
                tc.assistant_calls([c], f"I will call sort_list with the {len(items)} numbers."),
                tc.result(c, json.dumps(out)),
                tc.final("Sorted: " + ", ".join(map(str, out)), "The tool returned the sorted list."),
            ]
    elif kind == "parallel":
        if rng.random() < 0.5:
            c1, c2 = rng.sample(sorted(COUNTRIES), 2)
            (k1, t1, a1), (k2, t2, a2) = tc.capital(c1), tc.capital(c2)
            user = rng.choice(
                [f"What are the capitals of {c1} and {c2}?", f"Look up the capitals of {c1} and {c2}."]
            )
            answer = f"The capital of {c1} is {a1} and the capital of {c2} is {a2}."
            why = f"Two countries, so I call get_capital twice at once: {c1} and {c2}."
        else:
            x1, x2 = rng.sample(CITIES, 2)
            nd = rng.randint(1, 2)
            (k1, t1, f1), (k2, t2, f2) = tc.weather(x1, nd), tc.weather(x2, nd)
            user = f"Compare the weather in {x1} and {x2} for the next {nd} {plural(nd, 'day', 'days')}."
            answer = describe_forecast(x1, f1) + " " + describe_forecast(x2, f2)
            why = f"I need forecasts for {x1} and {x2}. I will request both in parallel."
        msgs += [
            tc.assistant_calls([k1, k2], why),
            tc.result(k1, t1),
            tc.result(k2, t2),
            tc.final(answer, "Both tool results are in. I combine them."),
        ]
    else:  # loop: call, result, another call, result, answer
        sub = rng.choice(["capital_weather", "calc_convert", "capital_count"])
        if sub == "capital_weather":
            country = rng.choice(sorted(COUNTRIES))
            nd = rng.randint(1, 3)
            c1, t1, cap = tc.capital(country)
            c2, t2, fc = tc.weather(cap, nd)
            user = f"What is the weather in the capital of {country} for the next {nd} {plural(nd, 'day', 'days')}?"
            msgs += [
                tc.assistant_calls([c1], f"First I need the capital of {country}."),
                tc.result(c1, t1),
                tc.assistant_calls([c2], f"The capital is {cap}. Now I get the forecast for {cap}."),
                tc.result(c2, t2),
                tc.final(
                    f"The capital of {country} is {cap}. " + describe_forecast(cap, fc),
                    f"I have the capital {cap} and its forecast.",
                ),
            ]
        elif sub == "calc_convert":
            src, dst, f = rng.choice(CONVERSIONS)
            a, b = rng.randint(10, 400), rng.randint(10, 400)
            c1, t1, v = tc.calc(a, "+", b)
            c2, t2, w = tc.convert(v, src, dst, f)
            user = f"I walked {a} {src} and then {b} {src}. How much is the total in {dst}?"
            msgs += [
                tc.assistant_calls([c1], f"First add {a} and {b} with the calculator."),
                tc.result(c1, t1),
                tc.assistant_calls([c2], f"The total is {v} {src}. Now convert {v} {src} to {dst}."),
                tc.result(c2, t2),
                tc.final(f"The total is {v} {src}, which is {w} {dst}.", f"{v} {src} converts to {w} {dst}."),
            ]
        else:
            country = rng.choice(sorted(COUNTRIES))
            c1, t1, cap = tc.capital(country)
            letter = rng.choice(cap.lower().replace(" ", ""))
            k = cap.lower().count(letter)
            c2 = tc.call("count_letters", {"word": cap, "letter": letter})
            user = (
                f"How many times does the letter '{letter}' appear in the name of the capital of {country}?"
            )
            msgs += [
                tc.assistant_calls([c1], f"I need the capital of {country} first."),
                tc.result(c1, t1),
                tc.assistant_calls([c2], f"The capital is {cap}. Now count '{letter}' in it."),
                tc.result(c2, str(k)),
                tc.final(
                    f"The capital of {country} is {cap}, and the letter '{letter}' appears "
                    f"{k} {plural(k, 'time', 'times')} in it (ignoring case).",
                    f"{cap} has {k} '{letter}'.",
                ),
            ]
    return user, msgs


# ---------------------------------------------------------------------------------------------
# Chat: conversations
# ---------------------------------------------------------------------------------------------


def task_kind_explains(why: str) -> bool:
    """Whether a task's reasoning is worded as a worked solution (not 'The user is greeting me')."""
    return not why.startswith("The user is")


def make_conversation(rng: random.Random) -> dict:
    ids = Ids(rng)
    reasoning = rng.random() < 0.4
    use_tools = rng.random() < 0.25
    long = rng.random() < 0.025
    r = rng.random()
    n_turns = 1 if r < 0.25 else 2 if r < 0.55 else 3 if r < 0.8 else 4
    if long and rng.random() < 0.4:
        n_turns = rng.randint(7, 12)

    messages: list[dict] = []
    r = rng.random()
    if r < 0.05:
        messages.append({"role": "system", "content": ""})
    elif r < 0.55:
        system = rng.choice(SYSTEM_PROMPTS)
        messages.append({"role": "system", "content": system})
    empty_reasoning_turn = reasoning and rng.random() < 0.05

    tc = ToolChat(rng, ids, reasoning)
    decl_only = use_tools and rng.random() < 0.12  # tools declared, none needed
    prev = None
    for t in range(n_turns):
        tool_turn = use_tools and not decl_only and (t == 0 or rng.random() < 0.4)
        if tool_turn:
            user, msgs = tool_exchange(rng, tc, long=long and t == 0)
            messages.append({"role": "user", "content": user})
            messages += msgs
            prev = None
            continue
        if t > 0 and prev is not None and rng.random() < 0.5:
            user, answer, why, prev = task_followup(rng, prev)
        elif t > 0 and t == n_turns - 1 and rng.random() < 0.15:
            user, answer, why, prev = task_thanks(rng)
        else:
            task = (
                rng.choice(LONG_TASKS) if long and (t == 0 or rng.random() < 0.3) else pick(rng, PLAIN_TASKS)
            )
            user, answer, why, prev = task(rng, long=long and task in LONG_TASKS)
        messages.append({"role": "user", "content": user})
        if not reasoning and task_kind_explains(why) and rng.random() < 0.5:
            # show the work in the answer itself; the worked solution ends with the result except
            # for letter counting, whose conclusion sentence is kept
            work = why.split(". ", 1)[1] if why.startswith("The user wants") else why
            answer = work + " " + answer if work.startswith("Spell it out") else work
        msg = {"role": "assistant", "content": answer}
        if reasoning and (t == n_turns - 1 or rng.random() < 0.85):
            msg["reasoning_content"] = "" if empty_reasoning_turn and t == 0 and n_turns > 1 else why
        messages.append(msg)

    record = {"messages": messages}
    if use_tools:
        names = set(tc.used)
        if decl_only:
            names.add(rng.choice(sorted(TOOL_DECLS)))
        extra = [n for n in sorted(TOOL_DECLS) if n not in names]
        names |= set(rng.sample(extra, rng.randint(0, 2)))
        order = sorted(names)
        rng.shuffle(order)
        record["tools"] = [TOOL_DECLS[n] for n in order]
    return record


# ---------------------------------------------------------------------------------------------
# Text corpus
# ---------------------------------------------------------------------------------------------


def doc_country(rng: random.Random) -> str:
    countries = rng.sample(sorted(COUNTRIES), rng.randint(1, 6))
    out = []
    for c in countries:
        cap, cont = COUNTRIES[c]
        s = rng.choice(
            [
                f"{c} is a country in {cont}. Its capital is {cap}.",
                f"The capital of {c} is {cap}. {c} is in {cont}.",
                f"{cap} is the capital city of {c}, a country in {cont}.",
            ]
        )
        if rng.random() < 0.4:
            s += f" Many people visit {cap} in the {rng.choice(['spring', 'summer', 'autumn', 'winter'])}."
        out.append(s)
    return " ".join(out)


def doc_story(rng: random.Random) -> str:
    name, animal, place = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(PLACES)
    friend, obj, adj = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(ADJECTIVES)
    paras = [f"Once upon a time there was a {adj} {animal} named {name}. {name} lived near {place}."]
    events = []
    for _ in range(rng.choice([1, 1, 2, 3, 4, 6, 10])):
        other = rng.choice(PLACES)
        options = [
            f'One morning {name} found {obj} on the path to {other}. "What is this?" asked {name}. '
            f'{friend} the {rng.choice(ANIMALS)} said, "Let us find out together."',
            f"{name} and {friend} walked to {other}. It was {rng.choice(CONDITIONS)} and the air was "
            f"{rng.choice(['cold', 'warm', 'fresh', 'still'])}. They counted {rng.randint(2, 12)} birds on the way.",
            f"At {other}, {name} met a {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)}. They shared "
            f"{rng.choice(FOODS)} and talked until the sun went down.",
            f'{name} felt {rng.choice(ADJECTIVES)}. "I will try again tomorrow," {name} said, and went home to {place}.',
            f"The next day {friend} helped {name} carry {obj} back to {place}. It took {rng.randint(2, 9)} hours.",
            f"On the way to {other} there was a {rng.choice(['wide', 'cold', 'fast', 'muddy'])} river. {name} and "
            f"{friend} built a bridge from {rng.randint(3, 20)} sticks and crossed it.",
            f"{friend} sang a song about {rng.choice(WORDS)}s while {name} picked {rng.randint(2, 15)} {rng.choice(COUNTABLE)}.",
            f"It started to rain, so {name} and {friend} waited under a tree near {other} and told each other stories.",
            f'{name} wrote a letter to {rng.choice(NAMES)}: "Dear friend, today I saw {obj} at {other}."',
        ]
        k = rng.randrange(len(options))
        if k not in {i for i, _ in events}:  # each kind of event at most once per story
            events.append((k, options[k]))
    paras += [e for _, e in events]
    paras.append(
        rng.choice(
            [
                f"In the end {name} was happy, and {friend} was too. The end.",
                f"From that day on, {name} kept {obj} safe. The end.",
                f"And that is how {name} learned to be {rng.choice(ADJECTIVES)}.",
            ]
        )
    )
    return "\n\n".join(paras)


def doc_table(rng: random.Random) -> str:
    k = rng.randint(2, 19)
    n = rng.choice([10, 10, 12, 20])
    kind = rng.choice(["mul", "add", "count", "sub"])
    if kind == "mul":
        return f"Multiplication table of {k}:\n" + "\n".join(f"{k} x {i} = {k * i}" for i in range(1, n + 1))
    if kind == "add":
        return f"Adding {k}:\n" + "\n".join(f"{i} + {k} = {i + k}" for i in range(1, n + 1))
    if kind == "sub":
        return f"Subtracting {k}:\n" + "\n".join(f"{i + k} - {k} = {i}" for i in range(1, n + 1))
    return f"Counting by {k}s: " + ", ".join(str(k * i) for i in range(1, n + 1)) + "."


def doc_list(rng: random.Random) -> str:
    kind = rng.choice(["shopping", "todo", "pack", "words"])
    n = rng.randint(3, 12)
    if kind == "shopping":
        items = [f"{rng.randint(1, 6)} {f}" for f in rng.sample(FOODS, n)]
        return f"Shopping list for {rng.choice(NAMES)}:\n" + "\n".join(f"- {x}" for x in items)
    if kind == "todo":
        acts = [
            "clean the kitchen",
            "call {n}",
            "water the garden",
            "read a book",
            "fix the bicycle",
            "write a letter to {n}",
            "buy {f}",
            "walk the dog",
            "pay the bills",
            "visit {p}",
        ]
        items = [
            rng.choice(acts).format(n=rng.choice(NAMES), f=rng.choice(FOODS), p=rng.choice(PLACES))
            for _ in range(n)
        ]
        return "To do today:\n" + "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items))
    if kind == "pack":
        return f"Things to pack for a trip to {rng.choice(CITIES)}:\n" + "\n".join(
            f"- {w}" for w in rng.sample(PACK_ITEMS, n)
        )
    words = rng.sample(WORDS, n)
    return (
        "Words in alphabetical order: "
        + ", ".join(sorted(words))
        + ".\nThe same words backwards: "
        + ", ".join(w[::-1] for w in words)
        + "."
    )


def doc_units(rng: random.Random) -> str:
    lines = []
    for src, dst, f in rng.sample(CONVERSIONS, rng.randint(1, 5)):
        n = rng.randint(2, 50)
        lines.append(
            f"There are {f} {UNITS[dst][1]} in one {UNITS[src][0]}. So {n} {UNITS[src][1]} "
            f"is {n * f} {UNITS[dst][1]}."
        )
    return " ".join(lines)


def doc_weather(rng: random.Random) -> str:
    city = rng.choice(CITIES)
    days = rng.randint(2, 7)
    lines = [f"Weather report for {city}."]
    for d in range(1, days + 1):
        lines.append(
            f"Day {d}: {rng.choice(CONDITIONS)}, {rng.randint(-5, 35)}C, wind {rng.randint(0, 40)} km/h."
        )
    return "\n".join(lines)


def doc_qa(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(2, 12)):
        r = rng.random()
        if r < 0.5:
            op = rng.choice("+-*")
            a, b = rng.randint(1, 99), rng.randint(1, 12 if op == "*" else 99)
            out.append(f"Q: What is {a} {op} {b}?\nA: {apply(a, op, b)}")
        elif r < 0.75:
            c = rng.choice(sorted(COUNTRIES))
            out.append(f"Q: What is the capital of {c}?\nA: {COUNTRIES[c][0]}")
        else:
            w = rng.choice(WORDS)
            ch = rng.choice(w)
            out.append(f"Q: How many '{ch}' are in '{w}'?\nA: {w.count(ch)}")
    return "\n\n".join(out)


def doc_code(rng: random.Random) -> str:
    v = rng.choice(["x", "n", "value", "num", "count", "total"])
    f = rng.choice(["helper", "compute", "solve", "run", "process", "calc"])
    snippets = [
        f'def add_{f}(a, b):\n    """Return the sum of a and b."""\n    return a + b\n\n\nprint(add_{f}({rng.randint(1, 50)}, {rng.randint(1, 50)}))\n',
        f"def factorial({v}):\n    result = 1\n    for i in range(2, {v} + 1):\n        result *= i\n    return result\n\n\nfor k in range({rng.randint(3, 8)}):\n    print(k, factorial(k))\n",
        f'def reverse_words(text):\n    words = text.split()\n    return " ".join(reversed(words))\n\n\nprint(reverse_words("{" ".join(rng.sample(WORDS, 4))}"))\n',
        f'def count_letter(word, letter):\n    {v} = 0\n    for ch in word:\n        if ch == letter:\n            {v} += 1\n    return {v}\n\n\nprint(count_letter("{rng.choice(WORDS)}", "a"))\n',
        f'numbers = {[rng.randint(0, 99) for _ in range(rng.randint(3, 10))]}\nnumbers.sort()\nprint("smallest:", numbers[0])\nprint("largest:", numbers[-1])\n',
        f"def fib({v}):\n    a, b = 0, 1\n    for _ in range({v}):\n        a, b = b, a + b\n    return a\n\n\nprint([fib(i) for i in range({rng.randint(5, 15)})])\n",
        "CAPITALS = {\n"
        + "".join(f'    "{c}": "{COUNTRIES[c][0]}",\n' for c in rng.sample(sorted(COUNTRIES), 3))
        + '}\n\n\ndef capital_of(country):\n    return CAPITALS.get(country, "unknown")\n',
        f"class Counter:\n    def __init__(self):\n        self.{v} = 0\n\n    def step(self, k={rng.randint(1, 5)}):\n        self.{v} += k\n        return self.{v}\n\n\nc = Counter()\nfor _ in range({rng.randint(2, 6)}):\n    print(c.step())\n",
        f"def km_to_m(km):\n    return km * 1000\n\n\nprint(km_to_m({rng.randint(1, 40)}))  # meters\n",
    ]
    picked = rng.sample(snippets, rng.choice([1, 1, 1, 2, 3]))
    return "\n\n".join(s.rstrip("\n") for s in picked) + "\n"


def doc_long(rng: random.Random) -> str:
    """The long tail: a story in chapters, a book of times tables, or a long drill."""
    kind = rng.choice(["chapters", "tables", "drill"])
    if kind == "chapters":
        return "\n\n".join(f"Chapter {i + 1}\n\n" + doc_story(rng) for i in range(rng.randint(3, 6)))
    if kind == "tables":
        lo = rng.randint(2, 6)
        return "\n\n".join(
            f"Multiplication table of {k}:\n" + "\n".join(f"{k} x {i} = {k * i}" for i in range(1, 11))
            for k in range(lo, lo + rng.randint(5, 8))
        )
    return "\n\n".join(doc_qa(rng) for _ in range(rng.randint(4, 8)))


TEXT_DOCS = [
    (doc_country, 3),
    (doc_story, 4),
    (doc_table, 2),
    (doc_list, 2),
    (doc_units, 1),
    (doc_weather, 1),
    (doc_qa, 2),
    (doc_code, 2),
    (doc_long, 0.35),
]


# ---------------------------------------------------------------------------------------------
# RL prompts
# ---------------------------------------------------------------------------------------------

ANSWER_SUFFIX = "Give the final answer on the last line as 'Answer: <answer>'."
LETTERS = "ABCD"


def rl_math(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.45:
        op = rng.choice("+-*")
        a, b = (
            (rng.randint(2, 99), rng.randint(2, 20))
            if op == "*"
            else (rng.randint(1, 999), rng.randint(1, 999))
        )
        expr = f"{a} {op} {b}"
        value = apply(a, op, b)
        q = rng.choice([f"What is {expr}?", f"Compute {expr}.", f"Calculate {expr}."])
    elif r < 0.7:
        a, b, c = rng.randint(1, 50), rng.randint(1, 50), rng.randint(2, 9)
        form, value = rng.choice(
            [
                ("({a} + {b}) * {c}", (a + b) * c),
                ("{a} * {c} - {b}", a * c - b),
                ("{a} + {b} * {c}", a + b * c),
                ("({a} - {b}) * {c}", (a - b) * c),
            ]
        )
        expr = form.format(a=a, b=b, c=c)
        q = rng.choice([f"What is {expr}?", f"Compute {expr}."])
    elif r < 0.85:
        name, food = rng.choice(NAMES), rng.choice(COUNTABLE)
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        if rng.random() < 0.5:
            q, value = (
                f"{name} has {a} {food} and buys {b} more. How many {food} does {name} have now?",
                a + b,
            )
        else:
            a = a + b
            q, value = f"{name} has {a} {food} and gives away {b}. How many {food} are left?", a - b
    else:
        n, k = rng.randint(2, 12), rng.randint(2, 30)
        q, value = f"A box holds {k} {rng.choice(WORDS)}s. How many are in {n} boxes?", n * k
    return q, str(value)


def rl_choice(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        country = rng.choice(sorted(COUNTRIES))
        right = COUNTRIES[country][0]
        wrong = rng.sample([c for c, _ in COUNTRIES.values() if c != right], 3)
        q = f"Which city is the capital of {country}?"
    else:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        value = a * b
        right = str(value)
        cands = sorted(
            {value + d for d in (-a, a, -b, b, -1, 1, 10, -10) if value + d > 0 and value + d != value}
        )
        wrong = [str(x) for x in rng.sample(cands, 3)]
        q = f"What is {a} * {b}?"
    options = wrong + [right]
    rng.shuffle(options)
    letter = LETTERS[options.index(right)]
    body = q + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)) + "\nChoose one letter."
    return body, letter


def rl_json(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    obj: dict = {"name": name}
    parts = [f'"name" set to "{name}"']
    for key in rng.sample(["age", "city", "count", "pet"], rng.randint(1, 3)):
        val = (
            rng.randint(1, 90)
            if key in ("age", "count")
            else rng.choice(CITIES)
            if key == "city"
            else rng.choice(ANIMALS)
        )
        obj[key] = val
        parts.append(f'"{key}" set to {val}' if isinstance(val, int) else f'"{key}" set to "{val}"')
    q = "Write a JSON object with " + join_and(parts) + ". Use exactly these keys."
    return q, json.dumps(obj, sort_keys=True)


RL_TASKS = [(("math", rl_math), 75), (("multiple_choice", rl_choice), 15), (("json", rl_json), 10)]


def make_rl(rng: random.Random) -> dict:
    task, gen = pick(rng, RL_TASKS)
    q, answer = gen(rng)
    return {"prompt": [{"role": "user", "content": q + "\n" + ANSWER_SUFFIX}], "answer": answer, "task": task}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def generate(*, seed: int, n_chat: int, n_text: int, n_rl: int) -> dict[str, list[dict]]:
    chat_rng, text_rng, rl_rng = (random.Random(seed * 10 + k) for k in (1, 2, 3))
    chat = [make_conversation(chat_rng) for _ in range(n_chat)]
    text = [{"text": pick(text_rng, TEXT_DOCS)(text_rng)} for _ in range(n_text)]
    rl = [make_rl(rl_rng) for _ in range(n_rl)]
    return {"tiny_chat.jsonl": chat, "tiny_text.jsonl": text, "tiny_rl.jsonl": rl}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="nemotron_core/assets/data")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--n-chat", type=int, default=3000)
    p.add_argument("--n-text", type=int, default=4000)
    p.add_argument("--n-rl", type=int, default=500)
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in generate(
        seed=args.seed, n_chat=args.n_chat, n_text=args.n_text, n_rl=args.n_rl
    ).items():
        write_jsonl(out / name, records)
        print(f"{out / name}: {len(records)} records, {(out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
