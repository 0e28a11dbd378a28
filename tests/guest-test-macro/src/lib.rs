// SPDX-License-Identifier: Apache-2.0
//! `#[guest_test]`, the mark of a guest test (tests/guest/): the function
//! stays as written, and `crate::harness::register_test!(NAME)` after it
//! puts it among the tests the harness runs, under its own name. A
//! proc-macro crate of its own because attributes can only come from one.

use proc_macro::{Delimiter, Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};

/// Marks `fn NAME() -> TestResult` as the guest test NAME.
#[proc_macro_attribute]
pub fn guest_test(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        return error("#[guest_test] takes no arguments");
    }
    let Some(name) = fn_name(&item) else {
        return error("#[guest_test] marks a function: fn NAME() -> TestResult");
    };
    let mut out = item;
    out.extend(registration(name));
    out
}

/// The name after the item's `fn` keyword (attributes and `pub` may come first).
fn fn_name(item: &TokenStream) -> Option<Ident> {
    let mut tokens = item.clone().into_iter();
    while let Some(token) = tokens.next() {
        if matches!(&token, TokenTree::Ident(i) if i.to_string() == "fn") {
            return match tokens.next() {
                Some(TokenTree::Ident(name)) => Some(name),
                _ => None,
            };
        }
    }
    None
}

/// `crate::harness::register_test!(NAME);`
fn registration(name: Ident) -> TokenStream {
    let mut tokens: Vec<TokenTree> = Vec::new();
    for (i, segment) in ["crate", "harness", "register_test"].iter().enumerate() {
        if i > 0 {
            tokens.push(Punct::new(':', Spacing::Joint).into());
            tokens.push(Punct::new(':', Spacing::Alone).into());
        }
        tokens.push(Ident::new(segment, Span::call_site()).into());
    }
    tokens.push(Punct::new('!', Spacing::Alone).into());
    let arg = TokenStream::from(TokenTree::Ident(name));
    tokens.push(Group::new(Delimiter::Parenthesis, arg).into());
    tokens.push(Punct::new(';', Spacing::Alone).into());
    tokens.into_iter().collect()
}

/// A `compile_error!` with `message`.
fn error(message: &str) -> TokenStream {
    format!("::core::compile_error!({message:?});")
        .parse()
        .expect("a compile_error! invocation parses")
}
