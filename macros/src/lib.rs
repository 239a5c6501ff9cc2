//! # spate-macros
//!
//! The attribute behind `#[spate::record]` (re-exported by the facade
//! crate `spate`, whose docs show it in use). It needs no parser: it puts
//! rkyv's three derives and `#[rkyv(crate = ::spate::rkyv)]` in front of
//! the item it is given, so that rkyv's derive, which names its own crate
//! `::rkyv` unless told, finds Spate's re-export instead — a user's crate
//! then needs no `rkyv` dependency of its own, and gets the rkyv (and the
//! features) that Spate's batches are built with.
//!
//! It promises nothing about items other than structs and enums (rkyv's
//! derive refuses them with its own message), and it assumes the facade is
//! reachable as `::spate` (a crate that renames it writes the derives and
//! `#[rkyv(crate = ...)]` itself).
#![forbid(missing_docs)]

use proc_macro::TokenStream;

/// What `#[spate::record]` puts in front of the item.
const ATTRIBUTES: &str =
    "#[derive(::spate::rkyv::Archive, ::spate::rkyv::Serialize, ::spate::rkyv::Deserialize)] \
                          #[rkyv(crate = ::spate::rkyv)]";

/// Makes a struct or enum a Spate record: derives rkyv's `Archive`,
/// `Serialize` and `Deserialize` through `spate::rkyv`. Takes no
/// arguments; further `#[rkyv(...)]` attributes on the item still apply.
#[proc_macro_attribute]
pub fn record(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        return "::core::compile_error!(\"#[spate::record] takes no arguments\");"
            .parse()
            .unwrap_or_default();
    }
    let mut out: TokenStream = match ATTRIBUTES.parse() {
        Ok(t) => t,
        Err(e) => {
            return format!("::core::compile_error!({:?});", e.to_string()).parse().unwrap_or_default();
        }
    };
    out.extend(item);
    out
}
