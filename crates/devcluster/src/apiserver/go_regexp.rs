//! Which CRD `pattern`s kube-apiserver refuses because Go's `regexp` (RE2
//! syntax) cannot compile them, although Rust's `regex` can.
//!
//! kube-apiserver compiles every pattern of a CRD's schema with Go's
//! `regexp` when the CRD is created or updated and refuses the CRD when one
//! does not compile. The development API server matches values with Rust's
//! `regex`, which accepts a superset of what Go accepts; without this check a
//! CRD that every real cluster refuses would pass our tests. The differences
//! that make Go refuse a pattern Rust accepts:
//! * repeat counts above 1000 (`{1,2048}`), also when nested repeats
//!   multiply beyond 1000 copies (`(a{2}){1000}`): Go's `invalid repeat
//!   count`;
//! * a repetition of a repetition (`a**`, `a{2}{3}`): Go's `invalid nested
//!   repetition operator`;
//! * named groups written `(?<name>…)`: Go before 1.22 (which includes every
//!   kube-apiserver built with an older Go) knows only `(?P<name>…)`; and
//!   group names that are not letters, digits and `_`;
//! * flags other than `i`, `m`, `s` and `U` (Rust's `x`, `u`, `R`);
//! * `\u` escapes (`\u00e9`, `\u{e9}`): Go knows `\x` only;
//! * class set operations (`[a--b]`, `[a&&b]`, `[a~~b]`): Go refuses some
//!   (`[a--b]`) and reads the others as plain characters, so a pattern with
//!   them would match differently here and on a cluster; the dev server
//!   refuses them all, stricter than kube-apiserver on purpose;
//! * Unicode classes Go's tables lack: `\p{Script=Greek}` and Rust's long
//!   names (`\p{Letter}`, `\p{Uppercase}`, `\p{ASCII}`, …). Go knows the
//!   general categories by their short names (`L`, `Lu`, …), `Any`, and the
//!   scripts (`Greek`, `Old_Italic`); a name is checked against the
//!   categories and, for scripts, only by its shape (capitalized words
//!   joined by `_`), so a made-up script name still passes here.
//!
//! A pattern Rust itself cannot parse is refused with Rust's error. Our own
//! CRDs' patterns are also compiled with Go itself (`tests/suite/crds.rs`).

use regex_syntax::ast::{self, Ast, Visitor};

/// Go's largest repeat count (`regexp/syntax`'s `maxRepeat`).
const GO_MAX_REPEAT: u32 = 1000;

/// Why Go's `regexp.Compile` refuses `pattern`, in Go's wording, or `None`
/// when it compiles there.
pub fn go_regexp_error(pattern: &str) -> Option<String> {
    let parsed = match ast::parse::Parser::new().parse(pattern) {
        Ok(parsed) => parsed,
        Err(error) => return Some(format!("error parsing regexp: {}", error.kind())),
    };
    ast::visit(&parsed, GoSyntax { pattern }).err()
}

struct GoSyntax<'p> {
    pattern: &'p str,
}

/// Go's `unicode.Categories` (and `Any`).
const GO_CATEGORIES: [&str; 39] = [
    "Any", "C", "Cc", "Cf", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn",
    "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc", "Sk", "Sm",
    "So", "Z", "Zl", "Zp", "Zs", "LC", "L&",
];

/// Long names Rust accepts for what Go names otherwise, or not at all.
const RUST_ONLY_CLASSES: [&str; 16] = [
    "Letter",
    "Uppercase",
    "Lowercase",
    "Alphabetic",
    "Number",
    "Digit",
    "Punctuation",
    "Symbol",
    "Mark",
    "Separator",
    "Other",
    "Control",
    "White_Space",
    "Whitespace",
    "Uppercase_Letter",
    "Lowercase_Letter",
];

fn go_knows_class(kind: &ast::ClassUnicodeKind) -> bool {
    match kind {
        ast::ClassUnicodeKind::OneLetter(letter) => "CLMNPSZ".contains(*letter),
        ast::ClassUnicodeKind::NamedValue { .. } => false,
        ast::ClassUnicodeKind::Named(name) => {
            let script_shaped = name.split('_').all(|word| {
                let mut chars = word.chars();
                chars.next().is_some_and(|c| c.is_ascii_uppercase())
                    && chars.all(|c| c.is_ascii_lowercase())
            });
            GO_CATEGORIES.contains(&name.as_str())
                || (script_shaped && !RUST_ONLY_CLASSES.contains(&name.as_str()))
        }
    }
}

fn is_unicode_escape(literal: &ast::Literal) -> bool {
    matches!(
        literal.kind,
        ast::LiteralKind::HexFixed(
            ast::HexLiteralKind::UnicodeShort | ast::HexLiteralKind::UnicodeLong
        ) | ast::LiteralKind::HexBrace(
            ast::HexLiteralKind::UnicodeShort | ast::HexLiteralKind::UnicodeLong
        )
    )
}

impl GoSyntax<'_> {
    fn text(&self, span: &ast::Span) -> &str {
        self.pattern
            .get(span.start.offset..span.end.offset)
            .unwrap_or_default()
    }

    fn check_flags(&self, flags: &ast::Flags) -> Result<(), String> {
        for item in &flags.items {
            if let ast::FlagsItemKind::Flag(
                ast::Flag::Unicode | ast::Flag::CRLF | ast::Flag::IgnoreWhitespace,
            ) = item.kind
            {
                return Err(format!(
                    "error parsing regexp: invalid or unsupported Perl syntax: `{}`",
                    self.text(&flags.span)
                ));
            }
        }
        Ok(())
    }

    fn check_class(&self, class: &ast::ClassUnicode) -> Result<(), String> {
        if go_knows_class(&class.kind) {
            Ok(())
        } else {
            Err(format!(
                "error parsing regexp: invalid character class range: `{}`",
                self.text(&class.span)
            ))
        }
    }

    fn check_literal(&self, literal: &ast::Literal) -> Result<(), String> {
        if is_unicode_escape(literal) {
            Err(format!(
                "error parsing regexp: invalid escape sequence: `{}`",
                self.text(&literal.span)
            ))
        } else {
            Ok(())
        }
    }
}

impl Visitor for GoSyntax<'_> {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), String> {
        match item {
            ast::ClassSetItem::Unicode(class) => self.check_class(class),
            ast::ClassSetItem::Literal(literal) => self.check_literal(literal),
            ast::ClassSetItem::Range(range) => {
                self.check_literal(&range.start)?;
                self.check_literal(&range.end)
            }
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, op: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err(format!(
            "error parsing regexp: invalid character class range: `{}`",
            self.text(&op.span)
        ))
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        match node {
            Ast::ClassUnicode(class) => self.check_class(class)?,
            Ast::Literal(literal) => self.check_literal(literal)?,
            Ast::Repetition(repetition) => {
                if matches!(*repetition.ast, Ast::Repetition(_)) {
                    return Err(format!(
                        "error parsing regexp: invalid nested repetition operator: `{}`",
                        self.text(&repetition.op.span)
                    ));
                }
                let ast::RepetitionKind::Range(range) = &repetition.op.kind else {
                    return Ok(());
                };
                let (min, max) = bounds(range);
                let largest = max.map_or(min, |max| min.max(max));
                let nested = (min >= 2 || max.is_some_and(|m| m >= 2))
                    && !repeat_is_valid(node, GO_MAX_REPEAT);
                if largest > GO_MAX_REPEAT || nested {
                    return Err(format!(
                        "error parsing regexp: invalid repeat count: `{}`",
                        self.text(&repetition.op.span)
                    ));
                }
            }
            Ast::Group(group) => match &group.kind {
                ast::GroupKind::CaptureName {
                    starts_with_p: false,
                    ..
                } => {
                    return Err(
                        "error parsing regexp: invalid or unsupported Perl syntax: `(?<`".into(),
                    );
                }
                ast::GroupKind::CaptureName { name, .. }
                    if !name
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    return Err(format!(
                        "error parsing regexp: invalid named capture: `(?P<{}>`",
                        name.name
                    ));
                }
                ast::GroupKind::NonCapturing(flags) => self.check_flags(flags)?,
                _ => {}
            },
            Ast::Flags(set) => self.check_flags(&set.flags)?,
            _ => {}
        }
        Ok(())
    }
}

/// `{m}`, `{m,}`, `{m,n}` as (min, max), `None` for no maximum.
fn bounds(range: &ast::RepetitionRange) -> (u32, Option<u32>) {
    match *range {
        ast::RepetitionRange::Exactly(n) => (n, Some(n)),
        ast::RepetitionRange::AtLeast(n) => (n, None),
        ast::RepetitionRange::Bounded(m, n) => (m, Some(n)),
    }
}

/// Go's `repeatIsValid`: whether `node` and the counted repeats inside it
/// expand to at most `n` copies of the innermost expression.
fn repeat_is_valid(node: &Ast, mut n: u32) -> bool {
    match node {
        Ast::Repetition(repetition) => {
            if let ast::RepetitionKind::Range(range) = &repetition.op.kind {
                let (min, max) = bounds(range);
                let copies = match max {
                    Some(0) => return true,
                    Some(max) => max,
                    None => min,
                };
                if copies > n {
                    return false;
                }
                // Go divides only by a positive count: `{0,}` leaves n.
                n = n.checked_div(copies).unwrap_or(n);
            }
            repeat_is_valid(&repetition.ast, n)
        }
        Ast::Group(group) => repeat_is_valid(&group.ast, n),
        Ast::Concat(concat) => concat.asts.iter().all(|a| repeat_is_valid(a, n)),
        Ast::Alternation(alternation) => alternation.asts.iter().all(|a| repeat_is_valid(a, n)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_counts_above_1000_are_refused_like_go() {
        assert_eq!(
            go_regexp_error("^[A-Za-z0-9_.\\-/]{1,2048}$").as_deref(),
            Some("error parsing regexp: invalid repeat count: `{1,2048}`")
        );
        assert!(go_regexp_error("a{1001}").is_some());
        assert!(go_regexp_error("a{1001,}").is_some());
        assert_eq!(go_regexp_error("a{1000}"), None);
        assert_eq!(go_regexp_error("^(a|b){0,1000}$"), None);
        assert!(go_regexp_error("(a{2}){1000}").is_some());
        assert!(go_regexp_error("((ab){10}c){101}").is_some());
        assert_eq!(go_regexp_error("((ab){10}c){100}"), None);
    }

    #[test]
    fn rust_only_groups_and_flags_are_refused() {
        assert!(go_regexp_error("(?<x>a)").is_some());
        assert_eq!(go_regexp_error("(?P<x>a)"), None);
        assert!(go_regexp_error("(?x)a b").is_some());
        assert!(go_regexp_error("(?u:a)").is_some());
        assert_eq!(go_regexp_error("(?i)abc(?s:.)"), None);
    }

    #[test]
    fn nested_repetitions_unicode_escapes_set_operations_and_long_class_names_are_refused() {
        for pattern in [
            "a**",
            "a*+",
            "a{2}{3}",
            "a{2}*",
            "\\u00e9",
            "\\u{e9}",
            "[\\u00e9]",
            "\\p{Letter}",
            "\\p{Uppercase}",
            "\\p{ASCII}",
            "[\\p{Letter}]",
            "\\p{Script=Greek}",
            "[a--b]",
            "[a&&b]",
            "(?P<a.b>x)",
        ] {
            assert!(go_regexp_error(pattern).is_some(), "{pattern}");
        }
        for pattern in [
            "a*",
            "(a*)+",
            "\\x{e9}",
            "\\pL",
            "\\p{Lu}",
            "\\p{Greek}",
            "\\p{Old_Italic}",
            "[\\p{Han}a-z]",
            "(?P<a_1>x)",
        ] {
            assert_eq!(go_regexp_error(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn unparsable_patterns_are_refused() {
        assert!(go_regexp_error("a(").is_some());
    }
}
