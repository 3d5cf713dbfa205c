"""Constrained decoding to JSON that fits a JSON schema, for the local backends.

Three layers, each usable alone:

- `JsonSchema`: a JSON schema (a dict, or a pydantic model's `model_json_schema()`) compiled
  into an incremental validator of compact JSON. It works on bytes (UTF-8), so a token that
  holds half a character (byte-level BPE) is judged exactly: `is_prefix(text)`,
  `is_complete(text)`, and `validator()` (feed text piece by piece, ask whether a
  continuation fits). `parse(text)` turns a finished reply into the model instance (pydantic
  validates it) or the JSON value.
- `TokenConstraint` (`JsonSchema.for_tokenizer(tokenizer)`): the schema against one
  vocabulary. Every token's bytes are worked out once (`token_bytes`) and put in a trie; the
  tokens allowed in a validator state are found by walking the trie with the validator
  (pruning every subtree whose prefix is already invalid) once per state and cached, so a
  long string or a repeated structure costs a dictionary lookup per step. `guide()` gives a
  row's `TokenGuide`: `allowed()` ids before each step, `advance(token)` after.
- `generate_structured(backend, request, schema)`: what `BaseBackend.generate_structured`
  does: the request decoded under the constraint (a local backend applies
  `GenerationRequest.constraint` at every step), the reply parsed and validated, and a few
  validated retries (other seeds) when it does not parse (a backend that cannot constrain).

The JSON written is deterministic in form: compact (no whitespace outside strings), object
properties in the schema's order (optional ones may be left out, others never added:
`additionalProperties` is not needed), strings with the simple escapes or ``\\uXXXX`` (no
lone surrogates). The supported schema: ``type`` object (``properties``, ``required``; or
``additionalProperties`` as a schema: a map), array (``items``, ``minItems``, ``maxItems``),
string (``minLength``, ``maxLength``), integer, number, boolean, null; ``enum``, ``const``,
``anyOf``/``oneOf``, a ``type`` list, ``$ref`` into ``$defs`` (not recursive), ``allOf`` of
one schema. Keywords that restrict values in ways a grammar does not follow (``minimum``,
``pattern``, ``format``...) are checked after decoding (pydantic does it for a model); any
other keyword is an error naming it and where it is.

Length: a `TokenGuide` knows the fewest bytes that close the JSON from each state. Near the end
of `max_tokens` it allows only tokens after which the rest still fits, one byte a token, so
the reply is complete JSON within the budget whenever the vocabulary has a token for every
byte the closing needs (`TokenConstraint.byte_complete`: true of byte-level BPE and byte
tokenizers). A `max_tokens` below the schema's shortest JSON is refused up front. When the
JSON is complete only a stop id (eos, end of turn) is allowed; a tokenizer without one ends
the row there.

The parts, each a module of this package: `nodes` (the compiler), `automaton`, `schema`
(`JsonSchema`, `bind`), `vocabulary`, `guide` (`TokenConstraint`, `TokenGuide`) and `generation`.
"""

from __future__ import annotations

from rung.decoding.structured.generation import STRUCTURED_ATTEMPTS, generate_structured
from rung.decoding.structured.guide import TokenConstraint, TokenGuide, start_guides
from rung.decoding.structured.nodes import MAX_EXPONENT_DIGITS, MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS, SchemaError
from rung.decoding.structured.schema import JsonSchema, JsonValidator, bind
from rung.decoding.structured.vocabulary import Vocabulary, token_bytes, vocabulary

__all__ = [
    "JsonSchema", "JsonValidator", "MAX_EXPONENT_DIGITS", "MAX_FRACTION_DIGITS", "MAX_INTEGER_DIGITS",
    "STRUCTURED_ATTEMPTS", "SchemaError", "TokenConstraint", "TokenGuide", "Vocabulary", "bind", "generate_structured",
    "start_guides", "token_bytes", "vocabulary",
]
