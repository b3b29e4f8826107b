"""Synthetic harmony conversations for training the nano model (tools/train_nano.py).

Six families, each a short single-turn exchange the way `ossrun.Chat` renders it (system message
with `Reasoning: low|medium|high`, developer message with instructions and/or function tools,
user, then the assistant's analysis, an optional tool call + result + second analysis, and a
final answer):

  chat        greetings and small talk
  arithmetic  2-3 digit addition/subtraction, 1-digit x 2-digit multiplication, worked by columns
  units       unit conversions by a power of ten or a small factor
  tool        get_weather(city), get_time(timezone), calculator(expression): call, result, answer
  json        a developer message states a JSON schema; the answer is one JSON object for it
  (effort)    every family writes shorter reasoning at low effort and longer at high

Everything is rendered with the project's own harmony renderer, so the training text is the
exact token stream the runtime produces and parses. `split` selects disjoint pools of cities,
names and schemas ("train" or "heldout"); the seed selects the numbers.

    python tools/nano_data.py --n 5 --seed 0      # print a few rendered conversations
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:  # the installed package (with its compiled core), else the source tree's pure-Python parts
    import ossrun  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from ossrun.harmony import Message, ToolDescription, developer_message, system_message  # noqa: E402
from ossrun.harmony.render import render_message  # noqa: E402
from ossrun.harmony.tokens import special_tokens  # noqa: E402

FAMILIES = ("chat", "arithmetic", "units", "tool", "json")
EFFORTS = ("low", "medium", "high")

# -- pools: every other item is held out, so held-out prompts name cities/people never trained on

_CITIES = """Paris London Tokyo Berlin Madrid Rome Oslo Lima Cairo Sydney Toronto Dublin Vienna Prague
Lisbon Athens Warsaw Moscow Delhi Mumbai Seoul Beijing Bangkok Hanoi Manila Jakarta Nairobi Lagos
Accra Dakar Tunis Algiers Rabat Istanbul Ankara Tehran Baghdad Riyadh Doha Dubai Karachi Lahore
Dhaka Colombo Kathmandu Kabul Tashkent Almaty Baku Tbilisi Yerevan Kyiv Minsk Riga Vilnius Tallinn
Helsinki Stockholm Copenhagen Amsterdam Brussels Zurich Geneva Munich Hamburg Milan Naples Venice
Florence Seville Valencia Porto Bordeaux Lyon Marseille Nice Edinburgh Glasgow Cardiff Belfast
Boston Chicago Denver Seattle Austin Dallas Houston Miami Atlanta Phoenix Portland Detroit
Montreal Vancouver Calgary Ottawa Havana Bogota Quito Caracas Santiago Montevideo Asuncion
Brasilia Recife Salvador Auckland Perth Adelaide Brisbane Hobart Osaka Kyoto Busan Taipei
Shanghai Shenzhen Chengdu Wuhan Singapore Kampala Kigali Lusaka Harare Maputo Luanda Windhoek
Gaborone Abuja Bamako Niamey Khartoum Addis Mogadishu Muscat Amman Beirut Damascus Nicosia Valletta
Sofia Bucharest Belgrade Zagreb Ljubljana Skopje Tirana Sarajevo Podgorica Bratislava Budapest
Krakow Gdansk Leipzig Dresden Cologne Frankfurt Stuttgart Bern Basel Turin Genoa Bologna Palermo
Malaga Bilbao Granada Toulouse Nantes Lille Rotterdam Utrecht Antwerp Ghent Bergen Malmo Aarhus
Turku Tampere Reykjavik Anchorage Honolulu Juneau Boise Omaha Tulsa Memphis Nashville Raleigh""".split()

_NAMES = """Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Liam Maria Noah Olivia Peter
Quinn Rosa Sam Tina Umar Vera Walter Xena Yusuf Zoe Aria Ben Chloe Dan Eva Finn Gina Hugo Ivy Jonas
Kira Leo Mia Nina Oscar Paula Raj Sara Tom Uma Victor Wendy Yara Zack Amir Bella Carlos Diana Elias
Fatima Gabriel Hana Ivan Julia Kofi Lena Marco Nadia Omar Priya Rami Sofia Theo Ursula Vikram Wanda
Ahmed Beatriz Chen Dmitri Elena Felix Greta Hassan Ingrid Jorge Keiko Lars Mei Nils Olga Pedro
Rania Stefan Tariq Vanya Wei Ximena Yuki Zara Anton Bianca Cyrus Delia Emil Flora Gustav Helga
Idris Juno Kai Luca Mila Nora Orla Pavel Rhea Silas Tessa Viktor Willa Yosef Zelda""".split()

_TIMEZONES = {"Tokyo": "Asia/Tokyo", "London": "Europe/London", "Paris": "Europe/Paris",
              "Berlin": "Europe/Berlin", "New York": "America/New_York",
              "Los Angeles": "America/Los_Angeles", "Sydney": "Australia/Sydney",
              "Moscow": "Europe/Moscow", "Delhi": "Asia/Kolkata", "Dubai": "Asia/Dubai",
              "Chicago": "America/Chicago", "Madrid": "Europe/Madrid", "Rome": "Europe/Rome",
              "Seoul": "Asia/Seoul", "Beijing": "Asia/Shanghai", "Cairo": "Africa/Cairo",
              "Toronto": "America/Toronto", "Singapore": "Asia/Singapore",
              "Bangkok": "Asia/Bangkok", "Lima": "America/Lima", "Oslo": "Europe/Oslo",
              "Athens": "Europe/Athens", "Nairobi": "Africa/Nairobi", "Jakarta": "Asia/Jakarta",
              "Denver": "America/Denver", "Lisbon": "Europe/Lisbon", "Vienna": "Europe/Vienna",
              "Mexico City": "America/Mexico_City", "Istanbul": "Europe/Istanbul",
              "Honolulu": "Pacific/Honolulu"}
_UTC_ZONES = ["UTC"] + [f"UTC{s}{h}" for h in range(1, 13) for s in "+-"]

_CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowy", "clear", "stormy",
               "partly cloudy", "overcast", "drizzly", "humid", "hazy", "mild"]


def _split(items: list, split: str) -> list:
    """Even positions train, odd positions are held out."""
    return items[0::2] if split == "train" else items[1::2]


_ONSETS = "b c d f g h j k l m n p r s t v w z br ch dr gr kr pl sh st tr th".split()
_VOWELS = "a e i o u a e i o ia ei ou".split()
_CODAS = [""] * 6 + "n r l s m k nd rt".split()


def made_up_name(rng: random.Random) -> str:
    """A pronounceable word no pool holds (e.g. "Dravoln"): trained beside the real pools so the
    model learns to copy any name from the prompt, not to recall the few it has seen."""
    n = rng.choice((2, 2, 3))
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n))
    return (word + rng.choice(_CODAS)).capitalize()


def _pick(rng: random.Random, pool: list, split: str) -> str:
    """A city or person for `split`; a third of the training ones are made up."""
    if split == "train" and rng.random() < 0.35:
        return made_up_name(rng)
    return rng.choice(_split(pool, split))


# -- tools ---------------------------------------------------------------------------------------

_WEATHER_DESCRIPTIONS = ["Get the current weather for a city.", "Get the current weather in a city.",
                         "Look up the weather for a city.", "Current weather for a city."]
_TIME_DESCRIPTIONS = ["Get the current time in a timezone.", "Get the local time in a timezone.",
                      "Current time for an IANA timezone."]
_CALC_DESCRIPTIONS = ["Evaluate an arithmetic expression.", "A calculator: evaluates an expression.",
                      "Compute the value of a math expression."]


def weather_tool(rng: random.Random) -> ToolDescription:
    param = rng.choice([{"type": "string"}, {"type": "string", "description": "The city name"},
                        {"description": "Name of the city", "type": "string"}])
    return ToolDescription("get_weather", rng.choice(_WEATHER_DESCRIPTIONS),
                           {"type": "object", "properties": {"city": param}, "required": ["city"]})


def time_tool(rng: random.Random) -> ToolDescription:
    param = rng.choice([{"type": "string"},
                        {"type": "string", "description": "IANA timezone, e.g. Europe/Paris"},
                        {"description": "The timezone", "type": "string"}])
    return ToolDescription("get_time", rng.choice(_TIME_DESCRIPTIONS),
                           {"type": "object", "properties": {"timezone": param},
                            "required": ["timezone"]})


def calculator_tool(rng: random.Random) -> ToolDescription:
    param = rng.choice([{"type": "string"},
                        {"type": "string", "description": "The expression, e.g. 12 * 7"}])
    return ToolDescription("calculator", rng.choice(_CALC_DESCRIPTIONS),
                           {"type": "object", "properties": {"expression": param},
                            "required": ["expression"]})


_TOOL_MAKERS = {"get_weather": weather_tool, "get_time": time_tool, "calculator": calculator_tool}


# -- a conversation -----------------------------------------------------------------------------

@dataclass
class Conversation:
    """One training example: header settings and the messages after the system message."""

    family: str
    effort: str
    date: str
    messages: list[Message]  # user, assistant ..., (tool ...), final
    instructions: str | None = None
    tools: list[ToolDescription] = field(default_factory=list)
    identity: str | None = None  # None: harmony's default ChatGPT line
    meta: dict = field(default_factory=dict)  # what the evaluation checks (answers, schema, ...)

    def header(self) -> list[Message]:
        kwargs = {} if self.identity is None else {"model_identity": self.identity}
        out = [system_message(conversation_start_date=self.date, reasoning_effort=self.effort,
                              **kwargs)]
        if self.instructions is not None or self.tools:
            out.append(developer_message(instructions=self.instructions,
                                         function_tools=self.tools or None))
        return out


def render_example(conv: Conversation, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and a 0/1 mask of the tokens the model must write.

    The mask covers every assistant message except the `<|start|>assistant` that the runtime's
    prompt already ends with (the first assistant message after a user or tool message); the
    last final message ends with <|return|>, a call with <|call|>. Analysis is kept (a turn's
    own analysis stays in the prompt until its final answer, HARMONY.md §11.4).
    """
    s = special_tokens(tokenizer)
    header = conv.header()
    has_tools = bool(conv.tools)
    ids: list[int] = []
    mask: list[int] = []
    prompt_tail = 1 + len(tokenizer.encode("assistant"))
    previous_role = None
    for m in header + conv.messages:
        t = render_message(m, tokenizer, conversation_has_function_tools=has_tools)
        if m is conv.messages[-1] and m.role == "assistant" and m.channel == "final":
            t[-1] = s.return_
        if m.role == "assistant":
            skip = prompt_tail if previous_role != "assistant" else 0
            mask += [0] * skip + [1] * (len(t) - skip)
        else:
            mask += [0] * len(t)
        ids += t
        previous_role = m.role
    return ids, mask


def prompt_messages(conv: Conversation) -> list[Message]:
    """The messages an evaluation sends: the user message only (the header comes from settings)."""
    return [conv.messages[0]]


def _assistant(text: str, channel: str) -> Message:
    return Message("assistant", text, channel=channel)


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2024, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


# -- family: chat --------------------------------------------------------------------------------

_GREETINGS = ["Hi", "Hello", "Hey", "Hi there", "Hello!", "hey there", "Good morning",
              "Good evening", "Hi!", "Howdy", "Hey!", "hello", "hi", "Greetings"]
_SMALL_TALK = [
    ("How are you?", "The user asks how I am. I should answer kindly and offer help.",
     "I'm doing well, thank you! How can I help you today?"),
    ("What is your name?", "The user asks my name. I am a tiny demo model.",
     "I'm a tiny demo model running on ossrun. How can I help?"),
    ("Who are you?", "The user asks who I am. I am a tiny demo model.",
     "I'm a tiny demo model of the gpt-oss architecture, running locally with ossrun."),
    ("What can you do?", "The user asks what I can do. I can do small sums, unit conversions, "
     "call tools and write JSON.",
     "I can do small arithmetic, convert units, call tools like get_weather, and answer in JSON."),
    ("Thank you!", "The user thanks me. I should reply politely.",
     "You're welcome! Let me know if you need anything else."),
    ("Thanks", "The user says thanks. A short polite reply.", "You're welcome!"),
    ("Tell me a joke.", "The user wants a joke. A short, friendly one.",
     "Why did the computer go to the doctor? It had a virus!"),
    ("Good night", "The user says good night. Reply warmly.", "Good night! Sleep well."),
    ("Bye", "The user says goodbye.", "Goodbye! Have a great day."),
    ("How is it going?", "The user asks how it is going. Answer kindly.",
     "It's going well, thanks for asking! What can I do for you?"),
    ("Are you a robot?", "The user asks if I am a robot. I am a small language model.",
     "I'm a small language model, not a robot, but I'm happy to help."),
    ("Can you help me?", "The user asks for help. I should say yes and ask what they need.",
     "Of course! What do you need help with?"),
    ("What is ossrun?", "The user asks about ossrun. It runs gpt-oss models on CPUs.",
     "ossrun is a runtime that runs OpenAI's gpt-oss models locally on CPUs."),
    ("Nice to meet you", "The user says nice to meet you. Reply in kind.",
     "Nice to meet you too! How can I help?"),
]


def _chat(rng: random.Random, effort: str, split: str) -> tuple[list[Message], dict]:
    if rng.random() < 0.4:
        greeting = rng.choice(_GREETINGS)
        name = _pick(rng, _NAMES, split) if rng.random() < 0.3 else None
        user = f"{greeting}, I'm {name}" if name else greeting
        if name:
            reasoning = {"low": f"{name} greets me.",
                         "medium": f"The user greets me and says their name is {name}. "
                                   "I should greet them back.",
                         "high": f"The user greets me and says their name is {name}. I should "
                                 f"greet {name} back by name and offer to help."}[effort]
            answer = f"Hello {name}! Nice to meet you. How can I help you today?"
        else:
            reasoning = {"low": "A greeting.",
                         "medium": "The user greets me. I should greet them back.",
                         "high": "The user greets me. I should greet them back in a friendly "
                                 "way and offer to help."}[effort]
            answer = rng.choice(["Hello! How can I help you today?",
                                 "Hi! What can I do for you today?",
                                 "Hello there! How can I help?"])
        return [Message("user", user), _assistant(reasoning, "analysis"),
                _assistant(answer, "final")], {}
    question, reasoning, answer = rng.choice(_SMALL_TALK)
    if effort == "low":
        reasoning = reasoning.split(". ")[0].rstrip(".") + "."
    elif effort == "high":
        reasoning += " I will keep the answer short and friendly."
    return [Message("user", question), _assistant(reasoning, "analysis"),
            _assistant(answer, "final")], {}


# -- family: arithmetic ------------------------------------------------------------------------

_PLACES = ["Ones", "Tens", "Hundreds", "Thousands"]


def _digits(n: int, width: int) -> list[int]:
    return [(n // 10**i) % 10 for i in range(width)]


def add_steps(a: int, b: int) -> list[str]:
    width = len(str(max(a, b)))
    da, db = _digits(a, width), _digits(b, width)
    steps, carry = [], 0
    for i in range(width):
        total = da[i] + db[i] + carry
        term = f"{da[i]} + {db[i]}" + (f" + {carry}" if carry else "")
        if total >= 10:
            steps.append(f"{_PLACES[i]}: {term} = {total}, write {total - 10} carry 1.")
        else:
            steps.append(f"{_PLACES[i]}: {term} = {total}, write {total}.")
        carry = total // 10
    if carry:
        steps.append(f"{_PLACES[width]}: carry 1, write 1.")
    return steps


def sub_steps(a: int, b: int) -> list[str]:
    width = len(str(a))
    da, db = _digits(a, width), _digits(b, width)
    steps, borrow = [], 0
    for i in range(width):
        top = da[i] - borrow
        term = f"{da[i]} - {db[i]}" + (f" - {borrow}" if borrow else "")
        if top < db[i]:
            steps.append(f"{_PLACES[i]}: {term} needs a borrow, {top + 10} - {db[i]} = "
                         f"{top + 10 - db[i]}, write {top + 10 - db[i]} borrow 1.")
            borrow = 1
        else:
            steps.append(f"{_PLACES[i]}: {term} = {top - db[i]}, write {top - db[i]}.")
            borrow = 0
    return steps


def mul_steps(a: int, b: int) -> list[str]:
    """a is one digit, b two digits."""
    ones, tens = b % 10, b // 10
    p = a * ones
    steps = [f"Ones: {a} * {ones} = {p}, write {p % 10} carry {p // 10}."]
    q = a * tens + p // 10
    steps.append(f"Tens: {a} * {tens} + {p // 10} = {q}, write {q}.")
    return steps


def _arith_question(rng: random.Random, expr: str) -> str:
    return rng.choice([f"What is {expr}?", f"{expr} = ?", f"Compute {expr}.", f"{expr}",
                       f"Calculate {expr}", f"what's {expr}?", f"Please work out {expr}.",
                       f"Can you tell me {expr}?", f"How much is {expr}?"])


def _arithmetic(rng: random.Random, effort: str, split: str) -> tuple[list[Message], dict]:
    kind = rng.choice(["add", "add", "sub", "sub", "mul"])
    if kind == "add":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        result, op, steps = a + b, "+", add_steps(max(a, b), min(a, b))
        if a < b:
            steps = [f"Add the larger first: {b} + {a}."] + steps
    elif kind == "sub":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        a, b = max(a, b), min(a, b)
        result, op, steps = a - b, "-", sub_steps(a, b)
    else:
        a, b = rng.randint(2, 9), rng.randint(10, 99)
        result, op, steps = a * b, "*", mul_steps(a, b)
        if rng.random() < 0.5:
            a, b = b, a
            steps = [f"Swap the factors: {b} * {a}."] + steps
    sym = op if op != "*" else rng.choice(["*", "x", "times"])
    expr = f"{a} {sym} {b}"
    digits = " ".join(str(result))
    if effort == "low":
        reasoning = " ".join(steps) + f" So {a} {op} {b} = {result}."
    elif effort == "medium":
        reasoning = (f"Work {a} {op} {b} column by column. " + " ".join(steps)
                     + f" Digits from the top: {digits}. So {a} {op} {b} = {result}.")
    else:
        reasoning = (f"The user wants {a} {op} {b}. I will work column by column from the ones, "
                     "keeping track of carries and borrows.\n" + "\n".join(steps)
                     + f"\nDigits from the top: {digits}. So {a} {op} {b} = {result}."
                     + " Let me restate the answer clearly.")
    answer = rng.choice([f"{a} {op} {b} = {result}.", f"{result}", f"The answer is {result}.",
                         f"{a} {op} {b} = {result}"])
    return [Message("user", _arith_question(rng, expr)), _assistant(reasoning, "analysis"),
            _assistant(answer, "final")], {"answer": result}


# -- family: units -------------------------------------------------------------------------------

_CONVERSIONS = [  # from, to, factor, plural forms
    ("km", "m", 1000, "kilometers", "meters"), ("m", "cm", 100, "meters", "centimeters"),
    ("cm", "mm", 10, "centimeters", "millimeters"), ("kg", "g", 1000, "kilograms", "grams"),
    ("L", "mL", 1000, "liters", "milliliters"), ("h", "min", 60, "hours", "minutes"),
    ("min", "s", 60, "minutes", "seconds"), ("ft", "in", 12, "feet", "inches"),
    ("days", "h", 24, "days", "hours"), ("weeks", "days", 7, "weeks", "days"),
]


def _units(rng: random.Random, effort: str, split: str) -> tuple[list[Message], dict]:
    src, dst, factor, src_long, dst_long = rng.choice(_CONVERSIONS)
    n = rng.randint(2, 9) if factor not in (10, 100, 1000) else rng.randint(2, 99)
    result = n * factor
    unit_src = rng.choice([src, src_long])
    user = rng.choice([f"Convert {n} {unit_src} to {dst_long}.", f"How many {dst_long} are in "
                       f"{n} {src_long}?", f"{n} {unit_src} in {dst_long}?",
                       f"What is {n} {src_long} in {dst_long}?"])
    if factor in (10, 100, 1000):
        zeros = len(str(factor)) - 1
        how = f"Multiplying by {factor} appends {zeros} zero{'s' if zeros > 1 else ''}: {result}."
    else:
        how = f"{n} * {factor} = {result}."
    reasoning = {"low": f"1 {src_long[:-1] if src_long.endswith('s') else src_long} = {factor} "
                        f"{dst_long}. {how}",
                 "medium": f"There are {factor} {dst_long} in one {src_long.rstrip('s')}. "
                           f"So multiply {n} by {factor}. {how}",
                 "high": f"The user wants {n} {src_long} in {dst_long}. There are {factor} "
                         f"{dst_long} in one {src_long.rstrip('s')}, so I multiply {n} by "
                         f"{factor}. {how} So {n} {src_long} is {result} {dst_long}."}[effort]
    answer = f"{n} {src_long} is {result} {dst_long}."
    return [Message("user", user), _assistant(reasoning, "analysis"),
            _assistant(answer, "final")], {"answer": result}


# -- family: tool ----------------------------------------------------------------------------------

def _weather_result(rng: random.Random, city: str) -> tuple[str, str]:
    """(result text as a Python tool would return it, the answer sentence)."""
    temp, cond = rng.randint(-15, 38), rng.choice(_CONDITIONS)
    style = rng.randrange(4)
    if style == 0:
        result = json.dumps({"city": city, "temperature_c": temp, "condition": cond})
    elif style == 1:
        result = json.dumps({"temperature": temp, "condition": cond})
    elif style == 2:
        result = f"{cond.capitalize()}, {temp} C"
    else:
        result = json.dumps({"city": city, "temp_c": temp, "sky": cond})
    return result, f"It is {temp} C and {cond} in {city} right now."


def _time_zone(rng: random.Random, split: str) -> tuple[str, str]:
    """(how the user names the place, the timezone argument)."""
    if rng.random() < 0.6:  # which zone a place is in is knowledge: every split uses them all
        place = rng.choice(sorted(_TIMEZONES))
        return place, _TIMEZONES[place]
    zone = rng.choice(_split(_UTC_ZONES, split) + ["UTC"])
    return zone, zone


def _tool(rng: random.Random, effort: str, split: str) -> tuple[list[Message], list, dict]:
    which = rng.choice(["get_weather", "get_weather", "get_time", "calculator"])
    others = [t for t in _TOOL_MAKERS if t != which]
    names = [which] + rng.sample(others, rng.randint(0, 2))
    rng.shuffle(names)
    tools = [_TOOL_MAKERS[n](rng) for n in names]
    if which == "get_weather":
        city = _pick(rng, _CITIES, split)
        user = rng.choice([f"What's the weather in {city}?", f"What is the weather like in {city}?",
                           f"Weather in {city}?", f"How is the weather in {city} today?",
                           f"Is it cold in {city}?", f"Tell me the weather in {city}."])
        args = {"city": city}
        result, answer = _weather_result(rng, city)
        plan = {"low": "Call get_weather.",
                "medium": f"The user wants the weather in {city}. I will call get_weather.",
                "high": f"The user asks about the weather in {city}. I have a get_weather tool "
                        f"that takes a city, so I will call it with {city}."}[effort]
        after = {"low": "Got it.", "medium": "The tool returned the weather. I will report it.",
                 "high": "The tool returned the current weather. I will give the temperature "
                         "and the condition."}[effort]
    elif which == "get_time":
        place, zone = _time_zone(rng, split)
        user = rng.choice([f"What time is it in {place}?", f"Current time in {place}?",
                           f"What's the time in {place} now?", f"Tell me the time in {place}."])
        args = {"timezone": zone}
        hh, mm = rng.randint(0, 23), rng.randint(0, 59)
        result = rng.choice([f"{hh:02d}:{mm:02d}", json.dumps({"timezone": zone,
                                                               "time": f"{hh:02d}:{mm:02d}"})])
        answer = f"It is {hh:02d}:{mm:02d} in {place} right now."
        plan = {"low": "Call get_time.",
                "medium": f"The user wants the time in {place}. The timezone is {zone}. "
                          "I will call get_time.",
                "high": f"The user asks for the current time in {place}. Its timezone is {zone}, "
                        "and the get_time tool takes a timezone, so I will call it."}[effort]
        after = {"low": "Got it.", "medium": "The tool returned the time. I will report it.",
                 "high": "The tool returned the local time. I will tell the user."}[effort]
    else:
        a, b = rng.randint(10, 999), rng.randint(2, 99)
        op = rng.choice(["+", "-", "*"])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        expr = f"{a} {op} {b}"
        user = rng.choice([f"Use the calculator to compute {expr}.", f"Calculate {expr} with the "
                           "calculator.", f"What is {expr}? Use the calculator tool."])
        args = {"expression": expr}
        result = rng.choice([str(value), json.dumps({"result": value})])
        answer = f"{expr} = {value}."
        plan = {"low": "Call calculator.",
                "medium": f"The user wants {expr} computed with the calculator. I will call it.",
                "high": f"The user asks me to compute {expr} with the calculator tool. I will pass "
                        "the expression as it is."}[effort]
        after = {"low": "Got it.", "medium": "The calculator returned the result.",
                 "high": "The calculator returned the result. I will state it."}[effort]
    recipient = f"functions.{which}"
    call = Message("assistant", json.dumps(args), channel="commentary", recipient=recipient,
                   content_type="<|constrain|>json")
    messages = [Message("user", user), _assistant(plan, "analysis"), call,
                Message("tool", result, name=recipient, recipient="assistant",
                        channel="commentary"),
                _assistant(after, "analysis"), _assistant(answer, "final")]
    return messages, tools, {"function": which, "arguments": args}


def _no_tool_needed(rng: random.Random, effort: str, split: str):
    """A greeting or sum while tools are declared: answer without calling one."""
    messages, meta = (_chat if rng.random() < 0.5 else _arithmetic)(rng, effort, split)
    names = rng.sample(list(_TOOL_MAKERS), rng.randint(1, 2))
    return messages, [_TOOL_MAKERS[n](rng) for n in names], meta


# -- family: json ------------------------------------------------------------------------------

_FIELDS = {  # field -> (schema, value maker)
    "name": ({"type": "string"}, lambda r, s: _pick(r, _NAMES, s)),
    "age": ({"type": "integer"}, lambda r, s: r.randint(1, 99)),
    "city": ({"type": "string"}, lambda r, s: _pick(r, _CITIES, s)),
    "email": ({"type": "string"}, None),
    "score": ({"type": "integer"}, lambda r, s: r.randint(0, 100)),
    "active": ({"type": "boolean"}, lambda r, s: r.random() < 0.5),
    "count": ({"type": "integer"}, lambda r, s: r.randint(0, 500)),
    "color": ({"type": "string"}, lambda r, s: r.choice(["red", "green", "blue", "black",
                                                         "white", "yellow", "purple", "orange"])),
}


def _heldout_schema(fields: list[str]) -> bool:
    """A fixed quarter of all field lists, by a hash that does not depend on Python's seed."""
    import zlib

    return zlib.crc32(",".join(fields).encode()) % 4 == 0


def _json_sentence(values: dict) -> str:
    parts = []
    for key, value in values.items():
        if key == "name":
            parts.append(f"the name is {value}")
        elif key == "active":
            parts.append("they are active" if value else "they are not active")
        else:
            parts.append(f"the {key} is {value}")
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + "."


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def _json(rng: random.Random, effort: str, split: str):
    keys = [k for k in _FIELDS if k != "email"]
    while True:  # held-out schemas: field lists (set and order) training never sees
        chosen = rng.sample(keys, rng.randint(2, 4))
        if _heldout_schema(chosen) == (split == "heldout"):
            break
    schema = {"type": "object", "properties": {k: _FIELDS[k][0] for k in chosen},
              "required": chosen}
    values = {k: _FIELDS[k][1](rng, split) for k in chosen}
    shown = dict(values)
    items = list(shown.items())
    rng.shuffle(items)
    user = rng.choice(["", "Extract the data: ", "Data: ", "Fill in the JSON: "]) + \
        _sentence_case(_json_sentence(dict(items)))
    instructions = rng.choice(["Reply with only a JSON object that matches this schema: ",
                               "Answer in JSON matching this schema: ",
                               "Respond with JSON for this schema: "]) + \
        json.dumps(schema, separators=(",", ":"))
    reasoning = {"low": "Fill the fields.",
                 "medium": "I must answer with JSON for the schema, with the fields "
                           + ", ".join(chosen) + ".",
                 "high": "The developer wants a JSON object with the fields " + ", ".join(chosen)
                         + ". I will take each value from the user's text and use the right "
                           "types."}[effort]
    answer = json.dumps(values)
    return [Message("user", user), _assistant(reasoning, "analysis"),
            _assistant(answer, "final")], instructions, {"schema": schema, "values": values}


# -- the generator ---------------------------------------------------------------------------------

_WEIGHTS = {"chat": 1, "arithmetic": 5, "units": 1, "tool": 3, "json": 2}


def make_conversation(rng: random.Random, family: str, split: str = "train") -> Conversation:
    effort = rng.choice(EFFORTS)
    date = _date(rng)
    identity = None if rng.random() < 0.85 else rng.choice(
        ["You are a helpful assistant.", "You are a tiny demo model."])
    instructions, tools, meta = None, [], {}
    if family == "chat":
        messages, meta = _chat(rng, effort, split)
    elif family == "arithmetic":
        messages, meta = _arithmetic(rng, effort, split)
    elif family == "units":
        messages, meta = _units(rng, effort, split)
    elif family == "tool":
        if split == "train" and rng.random() < 0.15:
            messages, tools, meta = _no_tool_needed(rng, effort, split)
            meta = {**meta, "no_tool": True}
        else:
            messages, tools, meta = _tool(rng, effort, split)
    elif family == "json":
        messages, instructions, meta = _json(rng, effort, split)
    else:
        raise ValueError(f"unknown family {family!r}")
    if instructions is None and family != "json" and rng.random() < 0.1:
        instructions = rng.choice(["Be concise.", "Answer briefly.", "Be friendly."])
    return Conversation(family, effort, date, messages, instructions, tools, identity, meta)


def conversations(seed: int, n: int, split: str = "train", family: str | None = None):
    """n conversations from `seed`; the family is drawn by weight unless given."""
    rng = random.Random(seed)
    fams, weights = zip(*_WEIGHTS.items())
    for _ in range(n):
        yield make_conversation(rng, family or rng.choices(fams, weights)[0], split)


def byte_tokenizer(n_vocab: int = 512):
    """The byte-level harmony tokenizer of ossrun's byte vocabulary, without a GGUF file."""
    return bpe_tokenizer([], n_vocab)


# -- a small BPE vocabulary ----------------------------------------------------------------------
# Byte-level sequences are ~3x longer than BPE ones, and attention cost grows with the square of
# the length: a small BPE learned from this data makes training on two cores affordable. Digits
# are never merged, so numbers stay one token per digit (the column-wise arithmetic needs that).

def _pretokens(text: str) -> list[str]:
    import regex
    from ossrun.tokenizer import O200K_PATTERN

    return regex.findall(O200K_PATTERN, text)


def train_bpe(n_merges: int, seed: int = 12345, n_conv: int = 3000) -> list[tuple[bytes, bytes]]:
    """Merges (a, b) in rank order, learned from rendered training conversations."""
    import collections

    tok = byte_tokenizer()
    counts: collections.Counter = collections.Counter()
    for conv in conversations(seed, n_conv, "train"):
        ids, _ = render_example(conv, tok)
        text_runs, run = [], []
        for i in ids:  # split at special tokens: pieces are encoded one by one anyway
            if tok.is_special(i):
                text_runs.append(bytes(run).decode("utf-8", "replace"))
                run = []
            else:
                run.append(i)
        text_runs.append(bytes(run).decode("utf-8", "replace"))
        for text in text_runs:
            counts.update(_pretokens(text))
    words = {tuple(bytes([c]) for c in w.encode()): n for w, n in counts.items()}
    merges = []
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                if not any(ch in b"0123456789" for ch in a + b):
                    pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        merged = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return merges


def bpe_tokens(merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Token byte strings in id (= rank) order: the 256 bytes, then one per merge."""
    return [bytes([b]) for b in range(256)] + [a + b for a, b in merges]


def bpe_tokenizer(merges: list[tuple[bytes, bytes]], n_vocab: int):
    """The tokenizer ossrun builds from a GGUF with these tokens (harmony specials after them)."""
    import tiktoken
    from ossrun.model_maker import _SPECIAL_NAMES, N_NAMED_SPECIALS
    from ossrun.tokenizer import O200K_PATTERN, Tokenizer

    tokens = bpe_tokens(merges)
    first = len(tokens)
    specials = {_SPECIAL_NAMES.get(k, f"<|reserved_{first + k}|>"): first + k
                for k in range(N_NAMED_SPECIALS)}
    specials |= {f"<|reserved_{i}|>": i for i in range(first + N_NAMED_SPECIALS, n_vocab)}
    pattern = O200K_PATTERN if merges else r"[\s\S]"
    enc = tiktoken.Encoding(name="nano", pat_str=pattern,
                            mergeable_ranks={t: i for i, t in enumerate(tokens)},
                            special_tokens=specials)
    return Tokenizer(enc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=("train", "heldout"), default="train")
    ap.add_argument("--family", choices=FAMILIES)
    ap.add_argument("--stats", action="store_true", help="print token-length statistics")
    a = ap.parse_args(argv)
    tok = byte_tokenizer()
    lengths = []
    for conv in conversations(a.seed, a.n, a.split, a.family):
        ids, mask = render_example(conv, tok)
        lengths.append((len(ids), sum(mask), conv.family))
        if not a.stats:
            print(f"--- {conv.family} / {conv.effort}: {len(ids)} tokens, {sum(mask)} trained")
            print(tok.decode(ids))
    if a.stats:
        import statistics
        for fam in FAMILIES:
            ls = [n for n, _, f in lengths if f == fam]
            if ls:
                print(f"{fam:11s} n={len(ls):5d} mean={statistics.mean(ls):6.0f} max={max(ls)}")
        print(f"trained tokens: {sum(m for _, m, _ in lengths) / sum(n for n, _, _ in lengths):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
