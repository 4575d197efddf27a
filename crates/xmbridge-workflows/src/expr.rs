//! The expression language of workflow conditions, `when` clauses, inputs and `Field = expr`
//! mappings: paths into the event JSON, literals, comparisons, `and`/`or`/`not`, arithmetic and
//! concatenation with `+`, a fixed set of functions, and `'… {{ path }} …'` string templates.
//!
//! It owns parsing (once, at load, with the column of every error), a static type guess used by the
//! mapping's type checks, and evaluation against an event. It must not reach outside the event it is
//! given: no I/O, no loops, no user-defined functions, so evaluation always ends and is cheap.
//! Semantics (see docs/workflows.md): a missing path is `null`; ordering comparisons with `null` are
//! false; `==`/`!=` treat `null` as a value (so `x == null` tests absence); numeric strings compare
//! as numbers.

use serde_json::{Number, Value};
use std::fmt;

/// A parsed expression with the text it came from.
#[derive(Clone, Debug)]
pub struct Expr {
    source: String,
    node: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Literal(Value),
    Path(Vec<String>),
    Template(Vec<Part>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Expr(Node),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

/// The functions an expression may call, with their arity.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Concat,
    Lower,
    Upper,
    Trim,
    Number,
    String,
    Coalesce,
    Default,
    Date,
    Substr,
    Length,
}

const FUNCTIONS: &[(&str, Func, usize, Option<usize>)] = &[
    ("concat", Func::Concat, 1, None),
    ("lower", Func::Lower, 1, Some(1)),
    ("upper", Func::Upper, 1, Some(1)),
    ("trim", Func::Trim, 1, Some(1)),
    ("number", Func::Number, 1, Some(1)),
    ("string", Func::String, 1, Some(1)),
    ("coalesce", Func::Coalesce, 1, None),
    ("default", Func::Default, 2, Some(2)),
    ("date", Func::Date, 1, Some(1)),
    ("substr", Func::Substr, 2, Some(3)),
    ("length", Func::Length, 1, Some(1)),
];

/// The names of the functions, for documentation and suggestions.
pub fn function_names() -> impl Iterator<Item = &'static str> {
    FUNCTIONS.iter().map(|f| f.0)
}

/// A syntax error: what is wrong and the 1-based column (in characters) where it was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (column {column})")]
pub struct ParseError {
    /// 1-based column, in characters, where the problem was found.
    pub column: usize,
    /// What is wrong, without the column.
    pub message: String,
}

/// What an expression yields, when that can be known before an event arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticType {
    /// A JSON string.
    Text,
    /// A JSON number.
    Number,
    /// A JSON boolean.
    Bool,
    /// JSON `null`.
    Null,
    /// Depends on the event (a path into a response, `coalesce` of mixed things …).
    Unknown,
}

impl fmt::Display for StaticType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StaticType::Text => "text",
            StaticType::Number => "number",
            StaticType::Bool => "boolean",
            StaticType::Null => "null",
            StaticType::Unknown => "unknown",
        })
    }
}

impl Expr {
    /// Parses `source`; errors carry the column.
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end_column: source.chars().count() + 1,
        };
        let node = p.expr()?;
        if let Some(t) = p.peek() {
            return Err(ParseError {
                column: t.column,
                message: format!("unexpected {} after a complete expression", t.kind),
            });
        }
        Ok(Expr {
            source: source.to_string(),
            node,
        })
    }

    /// A constant (a TOML number or boolean written directly as an input).
    pub fn constant(value: Value) -> Expr {
        Expr {
            source: value.to_string(),
            node: Node::Literal(value),
        }
    }

    /// The expression as written in the workflow file (for a constant, its JSON text).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value when the expression does not depend on the event (a literal, or a template
    /// without placeholders).
    pub fn constant_value(&self) -> Option<Value> {
        match &self.node {
            Node::Literal(v) => Some(v.clone()),
            Node::Template(parts) if parts.iter().all(|p| matches!(p, Part::Text(_))) => {
                Some(Value::String(render_template(parts, &Value::Null)))
            }
            Node::Neg(inner) => match inner.as_ref() {
                Node::Literal(Value::Number(n)) => n.as_f64().map(|f| number(-f)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The type this expression always yields, or `Unknown`.
    pub fn static_type(&self) -> StaticType {
        static_type(&self.node)
    }

    /// Every path the expression reads (e.g. `["response", "values", "QID1"]`).
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        collect_paths(&self.node, &mut out);
        out
    }

    /// Evaluates against `root` (an object whose keys are the path roots: `response`, `steps`, …).
    /// Never fails: missing data is `null`, and functions given the wrong kind of value return
    /// `null`.
    pub fn eval(&self, root: &Value) -> Value {
        eval(&self.node, root)
    }

    /// Evaluates as a condition: `true` only for a true boolean, a non-zero number or a non-empty
    /// string; `null` is false.
    pub fn eval_bool(&self, root: &Value) -> bool {
        truthy(&self.eval(root))
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Ident(String),
    Number(f64, String),
    Str(String, usize), // content and the column where its text starts (for template errors)
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ident(s) => write!(f, "`{s}`"),
            Kind::Number(_, s) => write!(f, "number {s}"),
            Kind::Str(..) => f.write_str("a string"),
            Kind::Op(o) => write!(f, "`{o}`"),
            Kind::LParen => f.write_str("`(`"),
            Kind::RParen => f.write_str("`)`"),
            Kind::LBracket => f.write_str("`[`"),
            Kind::RBracket => f.write_str("`]`"),
            Kind::Comma => f.write_str("`,`"),
            Kind::Dot => f.write_str("`.`"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    column: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let kind = if ["==", "!=", "<=", ">="].contains(&two.as_str()) {
            i += 2;
            Kind::Op(match two.as_str() {
                "==" => "==",
                "!=" => "!=",
                "<=" => "<=",
                _ => ">=",
            })
        } else if c.is_ascii_digit() {
            let start = i;
            // A dot belongs to the number only when a digit follows (`steps.x.0.email`).
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text.parse::<f64>().map_err(|_| ParseError {
                column,
                message: format!("`{text}` is not a number"),
            })?;
            Kind::Number(n, text)
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Kind::Ident(chars[start..i].iter().collect())
        } else if c == '\'' || c == '"' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError {
                            column,
                            message: format!("string opened here is not closed; add {quote}"),
                        });
                    }
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(&other) => s.push(other),
                            None => continue,
                        }
                        i += 2;
                    }
                    Some(&ch) if ch == quote => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            Kind::Str(s, column + 1)
        } else {
            i += 1;
            match c {
                '(' => Kind::LParen,
                ')' => Kind::RParen,
                '[' => Kind::LBracket,
                ']' => Kind::RBracket,
                ',' => Kind::Comma,
                '.' => Kind::Dot,
                '<' => Kind::Op("<"),
                '>' => Kind::Op(">"),
                '+' => Kind::Op("+"),
                '-' => Kind::Op("-"),
                '*' => Kind::Op("*"),
                '/' => Kind::Op("/"),
                '=' => {
                    return Err(ParseError {
                        column,
                        message: "`=` is not an operator; write `==` to compare".into(),
                    });
                }
                '&' | '|' | '!' => {
                    return Err(ParseError {
                        column,
                        message: format!(
                            "`{c}` is not an operator; write `and`, `or`, `not` or `!=`"
                        ),
                    });
                }
                _ => {
                    return Err(ParseError {
                        column,
                        message: format!("unexpected character `{c}`"),
                    });
                }
            }
        };
        out.push(Token { kind, column });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parser (precedence climbing: or < and < not < comparison < + - < * / < unary)

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end_column: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn column(&self) -> usize {
        self.peek().map(|t| t.column).unwrap_or(self.end_column)
    }

    fn at_ident(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Ident(w), .. }) if w == word)
    }

    fn at_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Op(o), .. }) if *o == op)
    }

    fn expr(&mut self) -> Result<Node, ParseError> {
        let mut left = self.and()?;
        while self.at_ident("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Node::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.not()?;
        while self.at_ident("and") {
            self.pos += 1;
            let right = self.not()?;
            left = Node::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, ParseError> {
        if self.at_ident("not") {
            self.pos += 1;
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, ParseError> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Token {
                kind: Kind::Op(o), ..
            }) => match *o {
                "==" => BinOp::Eq,
                "!=" => BinOp::Ne,
                "<" => BinOp::Lt,
                "<=" => BinOp::Le,
                ">" => BinOp::Gt,
                ">=" => BinOp::Ge,
                _ => return Ok(left),
            },
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.sum()?;
        if let Some(Token {
            kind: Kind::Op(o),
            column,
        }) = self.peek()
            && ["==", "!=", "<", "<=", ">", ">="].contains(o)
        {
            return Err(ParseError {
                column: *column,
                message: "comparisons do not chain; join them with `and`".into(),
            });
        }
        Ok(Node::Binary(op, Box::new(left), Box::new(right)))
    }

    fn sum(&mut self) -> Result<Node, ParseError> {
        let mut left = self.product()?;
        loop {
            let op = if self.at_op("+") {
                BinOp::Add
            } else if self.at_op("-") {
                BinOp::Sub
            } else {
                return Ok(left);
            };
            self.pos += 1;
            let right = self.product()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn product(&mut self) -> Result<Node, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.at_op("*") {
                BinOp::Mul
            } else if self.at_op("/") {
                BinOp::Div
            } else {
                return Ok(left);
            };
            self.pos += 1;
            let right = self.unary()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.at_op("-") {
            self.pos += 1;
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let column = self.column();
        let Some(tok) = self.next() else {
            return Err(ParseError {
                column,
                message: "expected a value, a path or a function call here".into(),
            });
        };
        match tok.kind {
            Kind::Number(n, _) => Ok(Node::Literal(number(n))),
            Kind::Str(s, start) => parse_template(&s, start),
            Kind::LParen => {
                let inner = self.expr()?;
                match self.next() {
                    Some(Token {
                        kind: Kind::RParen, ..
                    }) => Ok(inner),
                    _ => Err(ParseError {
                        column: self.column_before(),
                        message: format!("`(` at column {column} is not closed; add `)`"),
                    }),
                }
            }
            Kind::Ident(word) => match word.as_str() {
                "true" => Ok(Node::Literal(Value::Bool(true))),
                "false" => Ok(Node::Literal(Value::Bool(false))),
                "null" => Ok(Node::Literal(Value::Null)),
                "and" | "or" | "not" => Err(ParseError {
                    column,
                    message: format!("expected a value before `{word}`"),
                }),
                _ if matches!(
                    self.peek(),
                    Some(Token {
                        kind: Kind::LParen,
                        ..
                    })
                ) =>
                {
                    self.pos += 1;
                    self.call(word, column)
                }
                _ => self.path(word),
            },
            other => Err(ParseError {
                column,
                message: format!("expected a value, a path or a function call, found {other}"),
            }),
        }
    }

    fn column_before(&self) -> usize {
        self.tokens
            .get(self.pos.saturating_sub(1))
            .map(|t| t.column)
            .unwrap_or(self.end_column)
    }

    fn call(&mut self, name: String, column: usize) -> Result<Node, ParseError> {
        let Some(&(_, func, min, max)) = FUNCTIONS.iter().find(|f| f.0 == name) else {
            let hint = match closest(&name, function_names()) {
                Some(s) => format!("; did you mean {s}()?"),
                None => format!(
                    "; functions: {}",
                    function_names().collect::<Vec<_>>().join(", ")
                ),
            };
            return Err(ParseError {
                column,
                message: format!("unknown function {name}(){hint}"),
            });
        };
        let mut args = Vec::new();
        if matches!(
            self.peek(),
            Some(Token {
                kind: Kind::RParen,
                ..
            })
        ) {
            self.pos += 1;
        } else {
            loop {
                args.push(self.expr()?);
                match self.next() {
                    Some(Token {
                        kind: Kind::Comma, ..
                    }) => continue,
                    Some(Token {
                        kind: Kind::RParen, ..
                    }) => break,
                    _ => {
                        return Err(ParseError {
                            column: self.column_before(),
                            message: format!("expected `,` or `)` in the call of {name}()"),
                        });
                    }
                }
            }
        }
        if args.len() < min || max.is_some_and(|m| args.len() > m) {
            let wanted = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            return Err(ParseError {
                column,
                message: format!(
                    "{name}() takes {wanted} argument{}, not {}",
                    if wanted == "1" { "" } else { "s" },
                    args.len()
                ),
            });
        }
        Ok(Node::Call(func, args))
    }

    fn path(&mut self, first: String) -> Result<Node, ParseError> {
        let mut segments = vec![first];
        loop {
            match self.peek().map(|t| t.kind.clone()) {
                Some(Kind::Dot) => {
                    self.pos += 1;
                    let column = self.column();
                    match self.next().map(|t| t.kind) {
                        Some(Kind::Ident(s)) => segments.push(s),
                        Some(Kind::Number(_, text)) if !text.contains('.') => segments.push(text),
                        _ => {
                            return Err(ParseError {
                                column,
                                message: "expected a field name after `.`".into(),
                            });
                        }
                    }
                }
                Some(Kind::LBracket) => {
                    self.pos += 1;
                    let column = self.column();
                    let key = match self.next().map(|t| t.kind) {
                        Some(Kind::Str(s, _)) => s,
                        Some(Kind::Number(_, text)) if !text.contains('.') => text,
                        _ => {
                            return Err(ParseError {
                                column,
                                message: "expected a quoted key or an index inside `[ ]`".into(),
                            });
                        }
                    };
                    match self.next().map(|t| t.kind) {
                        Some(Kind::RBracket) => segments.push(key),
                        _ => {
                            return Err(ParseError {
                                column,
                                message: "`[` is not closed; add `]`".into(),
                            });
                        }
                    }
                }
                _ => return Ok(Node::Path(segments)),
            }
        }
    }
}

/// A quoted string is a template when it holds `{{ … }}`: each placeholder is an expression.
fn parse_template(s: &str, start_column: usize) -> Result<Node, ParseError> {
    if !s.contains("{{") {
        return Ok(Node::Literal(Value::String(s.to_string())));
    }
    let mut parts = Vec::new();
    let mut rest = s;
    let mut offset = 0; // characters consumed so far
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let open_column = start_column + offset + rest[..open].chars().count();
        let Some(close) = after.find("}}") else {
            return Err(ParseError {
                column: open_column,
                message: "`{{` is not closed; add `}}`".into(),
            });
        };
        let inner = &after[..close];
        let inner_column = open_column + 2;
        let expr = Expr::parse(inner).map_err(|e| ParseError {
            column: inner_column + e.column - 1,
            message: e.message,
        })?;
        if inner.trim().is_empty() {
            return Err(ParseError {
                column: open_column,
                message: "empty `{{ }}`; put a path inside, e.g. {{ contact.email }}".into(),
            });
        }
        parts.push(Part::Expr(expr.node));
        let consumed = open + 2 + close + 2;
        offset += rest[..consumed].chars().count();
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(Node::Template(parts))
}

/// The candidate nearest to `word` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Up to `n` candidates close to `word`, nearest first.
pub fn close_matches<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<&'a str> {
    let w = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1) + 1;
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| {
            let lc = c.to_lowercase();
            let d = if lc.contains(&w) || w.contains(&lc) {
                0
            } else {
                edit_distance(&w, &lc)
            };
            (d, c)
        })
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Static types

fn static_type(node: &Node) -> StaticType {
    match node {
        Node::Literal(v) => match v {
            Value::Null => StaticType::Null,
            Value::Bool(_) => StaticType::Bool,
            Value::Number(_) => StaticType::Number,
            Value::String(_) => StaticType::Text,
            _ => StaticType::Unknown,
        },
        Node::Path(_) => StaticType::Unknown,
        Node::Template(_) => StaticType::Text,
        Node::Not(_) => StaticType::Bool,
        Node::Neg(_) => StaticType::Number,
        Node::Binary(op, l, r) => match op {
            BinOp::Or
            | BinOp::And
            | BinOp::Eq
            | BinOp::Ne
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge => StaticType::Bool,
            BinOp::Sub | BinOp::Mul | BinOp::Div => StaticType::Number,
            BinOp::Add => match (static_type(l), static_type(r)) {
                (StaticType::Number, StaticType::Number) => StaticType::Number,
                (StaticType::Text, StaticType::Text) => StaticType::Text,
                _ => StaticType::Unknown,
            },
        },
        Node::Call(f, args) => match f {
            Func::Concat | Func::Lower | Func::Upper | Func::Trim | Func::String => {
                StaticType::Text
            }
            Func::Substr | Func::Date => StaticType::Text,
            Func::Number | Func::Length => StaticType::Number,
            Func::Coalesce | Func::Default => {
                let types: Vec<StaticType> = args
                    .iter()
                    .map(static_type)
                    .filter(|t| *t != StaticType::Null)
                    .collect();
                match types.first() {
                    Some(t) if types.iter().all(|u| u == t) => *t,
                    _ => StaticType::Unknown,
                }
            }
        },
    }
}

fn collect_paths(node: &Node, out: &mut Vec<Vec<String>>) {
    match node {
        Node::Literal(_) => {}
        Node::Path(p) => out.push(p.clone()),
        Node::Template(parts) => {
            for part in parts {
                if let Part::Expr(n) = part {
                    collect_paths(n, out);
                }
            }
        }
        Node::Not(n) | Node::Neg(n) => collect_paths(n, out),
        Node::Binary(_, l, r) => {
            collect_paths(l, out);
            collect_paths(r, out);
        }
        Node::Call(_, args) => {
            for a in args {
                collect_paths(a, out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number(Number::from(f as i64))
    } else {
        Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// A number, or a string that reads as one (Qualtrics sends answers both ways).
fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                None
            } else {
                t.parse::<f64>().ok().filter(|f| f.is_finite())
            }
        }
        _ => None,
    }
}

/// How a value reads inside text: strings as they are, null as nothing, numbers without `.0`.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn lookup<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = root;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn render_template(parts: &[Part], root: &Value) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Text(t) => s.push_str(t),
            Part::Expr(n) => s.push_str(&to_text(&eval(n, root))),
        }
    }
    s
}

fn compare(op: BinOp, l: &Value, r: &Value) -> bool {
    use std::cmp::Ordering;
    if matches!(op, BinOp::Eq | BinOp::Ne) {
        let equal = match (l, r) {
            (Value::Null, Value::Null) => true,
            (Value::Null, _) | (_, Value::Null) => false,
            _ => match (as_number(l), as_number(r)) {
                (Some(a), Some(b)) => a == b,
                _ => l == r,
            },
        };
        return if op == BinOp::Eq { equal } else { !equal };
    }
    let ordering = match (as_number(l), as_number(r)) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => match (l, r) {
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            _ => None,
        },
    };
    match ordering {
        None => false,
        Some(o) => match op {
            BinOp::Lt => o == Ordering::Less,
            BinOp::Le => o != Ordering::Greater,
            BinOp::Gt => o == Ordering::Greater,
            _ => o != Ordering::Less,
        },
    }
}

fn eval(node: &Node, root: &Value) -> Value {
    match node {
        Node::Literal(v) => v.clone(),
        Node::Path(p) => lookup(root, p).cloned().unwrap_or(Value::Null),
        Node::Template(parts) => Value::String(render_template(parts, root)),
        Node::Not(n) => Value::Bool(!truthy(&eval(n, root))),
        Node::Neg(n) => as_number(&eval(n, root))
            .map(|f| number(-f))
            .unwrap_or(Value::Null),
        Node::Binary(BinOp::And, l, r) => {
            Value::Bool(truthy(&eval(l, root)) && truthy(&eval(r, root)))
        }
        Node::Binary(BinOp::Or, l, r) => {
            Value::Bool(truthy(&eval(l, root)) || truthy(&eval(r, root)))
        }
        Node::Binary(op, l, r) => {
            let (a, b) = (eval(l, root), eval(r, root));
            match op {
                BinOp::Add => add(&a, &b),
                BinOp::Sub | BinOp::Mul | BinOp::Div => match (as_number(&a), as_number(&b)) {
                    (Some(x), Some(y)) => match op {
                        BinOp::Sub => number(x - y),
                        BinOp::Mul => number(x * y),
                        _ if y == 0.0 => Value::Null,
                        _ => number(x / y),
                    },
                    _ => Value::Null,
                },
                _ => Value::Bool(compare(*op, &a, &b)),
            }
        }
        Node::Call(f, args) => call(*f, args, root),
    }
}

/// `+`: numbers add (a numeric string counts when the other side is a number); otherwise, if
/// either side is text, both are joined as text (`null` joins as nothing).
fn add(a: &Value, b: &Value) -> Value {
    let numeric = |x: &Value| matches!(x, Value::Number(_));
    if (numeric(a) || numeric(b))
        && let (Some(x), Some(y)) = (as_number(a), as_number(b))
    {
        return number(x + y);
    }
    if a.is_string() || b.is_string() {
        return Value::String(to_text(a) + &to_text(b));
    }
    Value::Null
}

fn call(f: Func, args: &[Node], root: &Value) -> Value {
    let vals: Vec<Value> = args.iter().map(|a| eval(a, root)).collect();
    let text = |i: usize| -> Option<String> {
        match vals.get(i) {
            None | Some(Value::Null) => None,
            Some(v) => Some(to_text(v)),
        }
    };
    match f {
        Func::Concat => Value::String(vals.iter().map(to_text).collect()),
        Func::Lower => text(0).map(|s| s.to_lowercase().into()).unwrap_or_default(),
        Func::Upper => text(0).map(|s| s.to_uppercase().into()).unwrap_or_default(),
        Func::Trim => text(0).map(|s| s.trim().into()).unwrap_or_default(),
        Func::String => text(0).map(Value::String).unwrap_or_default(),
        Func::Number => vals
            .first()
            .and_then(|v| match v {
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                other => as_number(other),
            })
            .map(number)
            .unwrap_or(Value::Null),
        Func::Coalesce => vals.into_iter().find(|v| !v.is_null()).unwrap_or_default(),
        Func::Default => match &vals[0] {
            Value::Null => vals[1].clone(),
            Value::String(s) if s.is_empty() => vals[1].clone(),
            v => v.clone(),
        },
        Func::Date => vals.first().and_then(to_date).unwrap_or_default(),
        Func::Substr => {
            let Some(s) = text(0) else {
                return Value::Null;
            };
            let start = vals.get(1).and_then(as_number).unwrap_or(0.0).max(0.0) as usize;
            let len = vals.get(2).and_then(as_number).map(|n| n.max(0.0) as usize);
            let it = s.chars().skip(start);
            Value::String(match len {
                Some(n) => it.take(n).collect(),
                None => it.collect(),
            })
        }
        Func::Length => match vals.first() {
            Some(Value::String(s)) => number(s.chars().count() as f64),
            Some(Value::Array(a)) => number(a.len() as f64),
            Some(Value::Object(o)) => number(o.len() as f64),
            Some(Value::Null) | None => number(0.0),
            Some(other) => number(to_text(other).chars().count() as f64),
        },
    }
}

/// `date(x)`: the calendar date `YYYY-MM-DD` of an ISO-8601 date or date-time (its own date, not
/// converted to another zone), or of epoch seconds (UTC).
fn to_date(v: &Value) -> Option<Value> {
    match v {
        Value::Number(n) => {
            let secs = n.as_f64()?;
            let dt = chrono::DateTime::from_timestamp(secs as i64, 0)?;
            Some(Value::String(dt.format("%Y-%m-%d").to_string()))
        }
        Value::String(s) => {
            let s = s.trim();
            let head = s.get(..10)?;
            let d = chrono::NaiveDate::parse_from_str(head, "%Y-%m-%d").ok()?;
            let rest = &s[10..];
            if !(rest.is_empty() || rest.starts_with('T') || rest.starts_with(' ')) {
                return None;
            }
            Some(Value::String(d.format("%Y-%m-%d").to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(src: &str, root: &Value) -> Value {
        Expr::parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval(root)
    }

    fn event() -> Value {
        json!({
            "response": {"id": "R_1", "values": {"QID1": "3", "QID2": 9, "QID3_TEXT": "  Slow Service ",
                         "QID4#1_1": "x"},
                         "labels": {"QID1": "3 - Unlikely"}},
            "embedded": {"tier": "gold", "empty": ""},
            "contact": {"email": "Pat@Example.com", "firstName": "Pat"},
            "steps": {"upsert": {"id": "a0B1"}},
            "list": [10, 20],
            "rows": [{"email": "a@b"}]
        })
    }

    #[test]
    fn table_of_expressions() {
        let e = event();
        let cases: &[(&str, Value)] = &[
            ("response.values.QID1 <= 6", json!(true)),
            ("response.values.QID1 > 6", json!(false)),
            (
                "response.values.QID2 >= 9 and embedded.tier == 'gold'",
                json!(true),
            ),
            ("response.values.QID99 <= 6", json!(false)),
            ("response.values.QID99 > 6", json!(false)),
            ("response.values.QID99 == null", json!(true)),
            ("response.values.QID1 != null", json!(true)),
            ("not (response.values.QID1 <= 6) or false", json!(false)),
            ("response.values.QID1 == 3", json!(true)),
            ("'10' > '9'", json!(true)),
            ("'b' > 'a'", json!(true)),
            ("response.values.QID2 + 1", json!(10)),
            ("response.values.QID1 + 1", json!(4)),
            ("'NPS ' + response.values.QID1", json!("NPS 3")),
            ("'x' + response.values.QID99", json!("x")),
            ("1 + 2 * 3 - 4 / 2", json!(5)),
            ("-response.values.QID1", json!(-3)),
            ("7 / 0", Value::Null),
            ("lower(contact.email)", json!("pat@example.com")),
            ("upper(embedded.tier)", json!("GOLD")),
            ("trim(response.values.QID3_TEXT)", json!("Slow Service")),
            ("number(response.values.QID1)", json!(3)),
            ("number('abc')", Value::Null),
            ("string(response.values.QID2)", json!("9")),
            (
                "coalesce(contact.phone, contact.email)",
                json!("Pat@Example.com"),
            ),
            ("default(embedded.empty, 'none')", json!("none")),
            ("default(embedded.tier, 'none')", json!("gold")),
            ("date('2026-11-30T08:30:00Z')", json!("2026-11-30")),
            ("date(0)", json!("1970-01-01")),
            ("date('yesterday')", Value::Null),
            ("substr('abcdef', 1, 3)", json!("bcd")),
            ("substr('abcdef', 4)", json!("ef")),
            ("length(contact.firstName)", json!(3)),
            ("length(response.values.QID99)", json!(0)),
            (
                "concat(contact.firstName, ' <', contact.email, '>')",
                json!("Pat <Pat@Example.com>"),
            ),
            (
                "'Hi {{ contact.firstName }}, NPS {{response.values.QID1}}'",
                json!("Hi Pat, NPS 3"),
            ),
            ("\"{{ upper(embedded.tier) }}!\"", json!("GOLD!")),
            ("steps.upsert.id", json!("a0B1")),
            ("response.values['QID4#1_1']", json!("x")),
            ("list.1", json!(20)),
            ("rows.0.email", json!("a@b")),
            ("list[0]", json!(10)),
            ("true and null", json!(false)),
            ("1.5 * 2", json!(3)),
            ("0.5 + 0.25", json!(0.75)),
        ];
        for (src, want) in cases {
            assert_eq!(&ev(src, &e), want, "{src}");
        }
    }

    #[test]
    fn parse_errors_name_the_column() {
        let cases: &[(&str, &str)] = &[
            (
                "lenght(contact.email)",
                "unknown function lenght(); did you mean length()? (column 1)",
            ),
            (
                "a = 1",
                "`=` is not an operator; write `==` to compare (column 3)",
            ),
            (
                "a && b",
                "`&` is not an operator; write `and`, `or`, `not` or `!=` (column 3)",
            ),
            (
                "(a == 1",
                "`(` at column 1 is not closed; add `)` (column 8)",
            ),
            ("'abc", "string opened here is not closed; add ' (column 1)"),
            (
                "a ==",
                "expected a value, a path or a function call here (column 5)",
            ),
            (
                "a b",
                "unexpected `b` after a complete expression (column 3)",
            ),
            (
                "1 < a < 3",
                "comparisons do not chain; join them with `and` (column 7)",
            ),
            ("upper(a, b)", "upper() takes 1 argument, not 2 (column 1)"),
            (
                "substr(a)",
                "substr() takes 2 to 3 arguments, not 1 (column 1)",
            ),
            (
                "'x {{ a == }} y'",
                "expected a value, a path or a function call here (column 12)",
            ),
            ("'x {{ a'", "`{{` is not closed; add `}}` (column 4)"),
            ("a.", "expected a field name after `.` (column 3)"),
        ];
        for (src, want) in cases {
            let err = Expr::parse(src).err().map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(*want), "{src}");
        }
    }

    #[test]
    fn static_types() {
        let t = |s: &str| Expr::parse(s).map(|e| e.static_type()).ok();
        assert_eq!(t("'abc'"), Some(StaticType::Text));
        assert_eq!(t("'a {{ b }}'"), Some(StaticType::Text));
        assert_eq!(t("response.values.QID1"), Some(StaticType::Unknown));
        assert_eq!(t("number(response.values.QID1)"), Some(StaticType::Number));
        assert_eq!(t("a <= 6"), Some(StaticType::Bool));
        assert_eq!(t("1 + 2"), Some(StaticType::Number));
        assert_eq!(t("coalesce(a, 'x')"), Some(StaticType::Unknown));
        assert_eq!(t("coalesce(null, 'x')"), Some(StaticType::Text));
        assert_eq!(t("-3"), Some(StaticType::Number));
        assert_eq!(
            Expr::parse("-3").ok().and_then(|e| e.constant_value()),
            Some(json!(-3))
        );
    }

    #[test]
    fn paths_are_listed() {
        let e = Expr::parse("concat(a.b, '{{ c.d }}') == steps.x.id").unwrap();
        assert_eq!(
            e.paths(),
            vec![
                vec!["a".to_string(), "b".to_string()],
                vec!["c".to_string(), "d".to_string()],
                vec!["steps".to_string(), "x".to_string(), "id".to_string()],
            ]
        );
    }

    /// Parsing and evaluating arbitrary input never panics: random token soups (deterministic
    /// seed) either parse and evaluate, or fail with a column inside the text (or just past it).
    #[test]
    fn random_input_never_panics() {
        const PIECES: &[&str] = &[
            "response", ".", "values", "QID1", "'", "\"", "{{", "}}", "(", ")", "[", "]", ",",
            "==", "<=", "<", "+", "-", "*", "/", "and", "or", "not", "null", "true", "3", "0.5",
            "length", "substr", "date", "coalesce", "default", " ", "é", "😀", "#", "=", "!", "0.",
            "steps", "x",
        ];
        let root = event();
        let mut state: u64 = 0x5EED_1234_ABCD_0001;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let src: String = (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            match Expr::parse(&src) {
                Ok(e) => {
                    let _ = e.eval(&root);
                    let _ = e.static_type();
                }
                Err(err) => assert!(
                    err.column >= 1 && err.column <= src.chars().count() + 1,
                    "{src:?}: {err}"
                ),
            }
        }
    }

    /// Property-style check over a deterministic grid: numeric strings compare like numbers,
    /// every comparison with null is false, and `a < b` equals `not (a >= b)` when both are
    /// numbers.
    #[test]
    fn comparison_laws_hold_on_a_grid() {
        let values: Vec<Value> = vec![
            json!(-2),
            json!(0),
            json!(0.5),
            json!(6),
            json!(10),
            json!("6"),
            json!(" 10 "),
            json!("abc"),
            json!(""),
            Value::Null,
            json!(true),
        ];
        for a in &values {
            for b in &values {
                let root = json!({"a": a, "b": b});
                let lt = ev("a < b", &root);
                let ge = ev("a >= b", &root);
                if a.is_null() || b.is_null() {
                    assert_eq!(lt, json!(false));
                    assert_eq!(ge, json!(false));
                    assert_eq!(ev("a == b", &root), json!(a.is_null() && b.is_null()));
                }
                if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
                    assert_eq!(lt, json!(x < y), "{a} < {b}");
                    assert_eq!(ge, json!(x >= y), "{a} >= {b}");
                    assert_eq!(ev("a == b", &root), json!(x == y));
                }
                assert_eq!(ev("a != b", &root), json!(!truthy(&ev("a == b", &root))));
            }
        }
    }
}
