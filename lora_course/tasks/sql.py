"""The question -> SQL task: a question about a shop database in, one SQL query out (notebook 07).

The schema is fixed and never shown to the model: it learns table and column names from the
training examples. Questions need filters, joins, aggregates and grouping, are phrased several
ways, and often carry numbers that are not part of the query. A prediction is scored by running
it and the gold query on the same in-memory database and comparing the rows, not the text, so
`c.name` versus `customers.name`, or a different join order, still counts as correct.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections import Counter
from functools import cache

from .task import Task

DATABASE_SEED = 0
MAX_SQLITE_STEPS = 200_000  # a predicted query that runs longer than this is stopped (a cross join)

SCHEMA = """\
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, joined INTEGER);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER,
                     quantity INTEGER, year INTEGER);"""

NAMES = [
    "Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
    "Wes", "Xena", "Yuki", "Zane",
]  # fmt: skip
CITIES = ["Lisbon", "Oslo", "Denver", "Austin", "Lyon", "Porto"]
PRODUCTS = {  # name: (category, price)
    "desk lamp": ("home", 35.0), "floor lamp": ("home", 89.0), "rug": ("home", 120.0),
    "kettle": ("kitchen", 45.0), "toaster": ("kitchen", 39.0), "blender": ("kitchen", 79.0),
    "laptop": ("computing", 999.0), "monitor": ("computing", 249.0),
    "keyboard": ("computing", 59.0),
    "headphones": ("audio", 149.0), "speaker": ("audio", 99.0), "earbuds": ("audio", 69.0),
}  # fmt: skip
CATEGORIES = sorted({category for category, _ in PRODUCTS.values()})
YEARS = [2021, 2022, 2023, 2024]

# Each intent: phrasings of the question and the gold query. Slots: {name} {city} {product}
# {category} {price} {year} {n}. Aliases keep the answers short (every token costs CPU time).
INTENTS = {
    "customers_in_city": (
        [
            "Which customers live in {city}?",
            "List the names of all customers from {city}.",
            "Who are our customers based in {city}?",
            "Give me every customer whose city is {city}.",
        ],
        "SELECT name FROM customers WHERE city = '{city}'",
    ),
    "count_customers_in_city": (
        [
            "How many customers are from {city}?",
            "Count the customers located in {city}.",
            "What is the number of customers in {city}?",
        ],
        "SELECT COUNT(*) FROM customers WHERE city = '{city}'",
    ),
    "customers_joined_after": (
        [
            "Which customers joined after {year}?",
            "List customers who signed up later than {year}.",
            "Names of customers with a join year after {year}, please.",
        ],
        "SELECT name FROM customers WHERE joined > {year}",
    ),
    "cheap_products_in_category": (
        [
            "Which {category} products cost less than {price} dollars?",
            "List {category} items priced under ${price}.",
            "Show me the {category} products cheaper than {price}.",
        ],
        "SELECT name FROM products WHERE category = '{category}' AND price < {price}",
    ),
    "average_price_in_category": (
        [
            "What is the average price of {category} products?",
            "On average, how much does a {category} product cost?",
            "Mean price across the {category} category?",
        ],
        "SELECT AVG(price) FROM products WHERE category = '{category}'",
    ),
    "priciest_in_category": (
        [
            "What is the most expensive {category} product?",
            "Which {category} item has the highest price?",
            "Name the priciest product in {category}.",
        ],
        "SELECT name FROM products WHERE category = '{category}' ORDER BY price DESC LIMIT 1",
    ),
    "orders_by_customer": (
        [
            "How many orders has {name} placed?",
            "Count the orders made by {name}.",
            "What's the number of orders from customer {name}?",
        ],
        "SELECT COUNT(*) FROM orders o JOIN customers c ON o.customer_id = c.id "
        "WHERE c.name = '{name}'",
    ),
    "buyers_of_product": (
        [
            "Who bought a {product}?",
            "List the customers that ordered the {product}.",
            "Which customers have purchased a {product}?",
        ],
        "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
        "JOIN products p ON o.product_id = p.id WHERE p.name = '{product}'",
    ),
    "units_of_product_in_year": (
        [
            "How many units of the {product} were sold in {year}?",
            "Total quantity of {product} ordered during {year}?",
            "In {year}, how many {product} units did we sell?",
        ],
        "SELECT SUM(o.quantity) FROM orders o JOIN products p ON o.product_id = p.id "
        "WHERE p.name = '{product}' AND o.year = {year}",
    ),
    "revenue_from_city": (
        [
            "What is the total revenue from customers in {city}?",
            "How much money did customers from {city} spend in total?",
            "Sum of sales (price times quantity) for {city} customers?",
        ],
        "SELECT SUM(o.quantity * p.price) FROM orders o JOIN customers c ON o.customer_id = c.id "
        "JOIN products p ON o.product_id = p.id WHERE c.city = '{city}'",
    ),
    "cities_with_many_customers": (
        [
            "Which cities have more than {n} customers?",
            "List the cities where over {n} customers live.",
            "Show cities with a customer count above {n}.",
        ],
        "SELECT city FROM customers GROUP BY city HAVING COUNT(*) > {n}",
    ),
    "orders_per_category": (
        [
            "How many orders were placed in each product category?",
            "Give the order count per category.",
            "For every category, count its orders.",
        ],
        "SELECT p.category, COUNT(*) FROM orders o JOIN products p ON o.product_id = p.id "
        "GROUP BY p.category",
    ),
}
PREFIXES = [
    "", "", "", "Quick question: ", "For the {other_year} report, ",
    "My manager (ext. {ext}) asks: ", "Hi! ", "Ticket #{ext}: ",
]  # fmt: skip


def draw(rng: random.Random, split: str) -> dict[str, str] | None:
    """{'question': text, 'answer': gold SQL query} for `split`, or None: not for this split.

    Rejected: a body held out from training drawn for train (or the reverse for validation and
    test), and a gold query whose result could be matched by accident (empty or NULL rows). Both
    tests use no random numbers, so a rejection does not change what is drawn next.
    """
    prefix, body, answer = _draw_parts(rng)
    if held_out(body) != (split != "train") or not _informative(run_query(answer)):
        return None
    return {"question": prefix + body, "answer": answer}


def _draw_parts(rng: random.Random) -> tuple[str, str, str]:
    """(prefix, question body, gold query): the body without its prefix decides the split."""
    intent = rng.choice(list(INTENTS))
    phrasings, query = INTENTS[intent]
    slots = {
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "product": rng.choice(list(PRODUCTS)),
        "category": rng.choice(CATEGORIES),
        "price": rng.choice([40, 50, 60, 75, 100, 150, 200, 500]),
        "year": rng.choice(YEARS),
        "n": rng.randint(2, 5),
        "other_year": rng.choice([2019, 2020, 2025]),
        "ext": rng.randint(100, 999),
    }
    prefix, body = rng.choice(PREFIXES).format(**slots), rng.choice(phrasings).format(**slots)
    if prefix and not prefix.endswith("! "):
        body = body[0].lower() + body[1:]  # "Quick question: which ..."
    return prefix, body, query.format(**slots)


def held_out(body: str) -> bool:
    """True for the quarter of question bodies kept out of training (a fixed hash, not random).

    The training split never contains a held-out body, and validation and test contain only
    held-out ones, so a model that memorized the training questions scores nothing: it must
    combine a phrasing seen with other values with values seen in other phrasings.
    """
    return hashlib.sha256(body.lower().encode()).digest()[0] % 4 == 0


def _informative(rows: list[tuple]) -> bool:
    """False for empty or NULL results: a wrong query could match them by accident."""
    return bool(rows) and any(value is not None and value != 0 for row in rows for value in row)


@cache
def database() -> sqlite3.Connection:
    """The shop database, in memory, read-only, the same rows every time (seeded)."""
    rng = random.Random(DATABASE_SEED)
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(SCHEMA)
    customers = [(i + 1, name, rng.choice(CITIES), rng.randint(2018, 2024)) for i, name in
                 enumerate(NAMES)]  # fmt: skip
    products = [
        (i + 1, name, cat, price) for i, (name, (cat, price)) in enumerate(PRODUCTS.items())
    ]
    orders = [
        (i + 1, rng.randint(1, len(NAMES)), rng.randint(1, len(PRODUCTS)), rng.randint(1, 4),
         rng.choice(YEARS))
        for i in range(150)
    ]  # fmt: skip
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", products)
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", orders)
    conn.commit()
    conn.execute("PRAGMA query_only = ON")  # a predicted DELETE or DROP cannot change it
    return conn


def run_query(query: str) -> list[tuple]:
    """Rows a query returns on the shop database; raises sqlite3.Error if it fails or runs away."""
    conn = database()
    steps = 0

    def stop_runaway() -> int:
        nonlocal steps
        steps += 1000
        return int(steps > MAX_SQLITE_STEPS)  # non-zero interrupts the query

    conn.set_progress_handler(stop_runaway, 1000)
    try:
        cursor = conn.execute(query)
        if cursor.description is None:  # an empty string, a comment, a PRAGMA: not a query
            raise sqlite3.ProgrammingError(f"not a query: {query!r}")
        return cursor.fetchall()
    finally:
        conn.set_progress_handler(None, 0)


def _comparable(rows: list[tuple], ordered: bool) -> list[tuple] | Counter:
    rounded = [tuple(round(v, 2) if isinstance(v, float) else v for v in row) for row in rows]
    return rounded if ordered else Counter(rounded)


def score(prediction: str, answer: str) -> dict[str, bool]:
    """'executes' (the prediction runs) and 'correct' (same rows as the gold query)."""
    gold = run_query(answer)
    try:
        predicted = run_query(prediction.strip().rstrip(";"))
    except (sqlite3.Error, sqlite3.Warning):  # syntax error, unknown column, runaway, 2 queries
        return {"executes": False, "correct": False}
    ordered = "ORDER BY" in answer.upper()
    return {
        "executes": True,
        "correct": _comparable(predicted, ordered) == _comparable(gold, ordered),
    }


TASK = Task(
    name="sql",
    input_field="question",
    system_prompt="Reply with one SQLite query for the shop database.",
    splits={"train": (2000, 11), "validation": (200, 12), "test": (200, 13)},  # size, seed
    draw=draw,
    score=score,
    main_metric="correct",  # the query returns the right rows
)
