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
//! * named groups written `(?<name>…)`: Go before 1.22 (which includes every
//!   kube-apiserver built with an older Go) knows only `(?P<name>…)`;
//! * flags other than `i`, `m`, `s` and `U` (Rust's `x`, `u`, `R`).
//!
//! A pattern Rust itself cannot parse is refused with Rust's error.

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
}

impl Visitor for GoSyntax<'_> {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        match node {
            Ast::Repetition(repetition) => {
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
    fn unparsable_patterns_are_refused() {
        assert!(go_regexp_error("a(").is_some());
    }
}
