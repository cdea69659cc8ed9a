//! The generator of `include/luo.h`.
//!
//! The header is written from the same tokens that define the C interface: every exported
//! function is defined through [`c_functions!`](crate::c_functions), every struct through
//! [`c_structs!`](crate::c_structs) and every constant through
//! [`c_constants!`](crate::c_constants), and each macro records, next to the item it defines,
//! its doc comment, its name and the C spelling of each of its types ([`CType`]). A type
//! without a C spelling does not compile. [`generate`] prints the records in order.
//!
//! The committed header is checked against [`generate`] by `tests/header.rs`; regenerate it
//! with
//!
//! ```text
//! cargo run -p luo-capi --example luo-h > crates/luo-capi/include/luo.h
//! ```

use std::ffi::{c_char, c_int, c_void};
use std::fmt::Write as _;

/// A Rust type that C spells some way.
pub trait CType {
    /// How C names the type (`"const char *"`, `"struct luo_client"`).
    fn c_type() -> String;

    /// A declaration of `name` with this type (`"char version[32]"`, `"int *fd_out"`).
    fn declare(name: &str) -> String {
        join(&Self::c_type(), name)
    }
}

/// `ty name`, without a space after a `*`.
fn join(ty: &str, name: &str) -> String {
    if ty.ends_with('*') {
        format!("{ty}{name}")
    } else {
        format!("{ty} {name}")
    }
}

macro_rules! scalar {
    ($($t:ty => $c:literal,)*) => {
        $(impl CType for $t {
            fn c_type() -> String {
                $c.to_owned()
            }
        })*
    };
}

// c_int is i32 and c_char is i8 on every target luod supports; the C names are the ones the
// interface means.
scalar! {
    () => "void",
    c_int => "int",
    u32 => "uint32_t",
    u64 => "uint64_t",
    c_char => "char",
    c_void => "void",
    usize => "size_t",
}

impl<T: CType> CType for *mut T {
    fn c_type() -> String {
        let inner = T::c_type();
        if inner.ends_with('*') {
            format!("{inner}*")
        } else {
            format!("{inner} *")
        }
    }
}

impl<T: CType> CType for *const T {
    fn c_type() -> String {
        let inner = T::c_type();
        if inner.ends_with('*') {
            format!("{inner}const *")
        } else {
            format!("const {inner} *")
        }
    }
}

impl<T: CType, const N: usize> CType for [T; N] {
    fn c_type() -> String {
        format!("{}[{N}]", T::c_type())
    }

    fn declare(name: &str) -> String {
        format!("{}[{N}]", join(&T::c_type(), name))
    }
}

/// A parameter: its name and its type.
pub type Param = (&'static str, fn() -> String);

/// One exported function.
#[derive(Debug)]
pub struct Function {
    /// Its doc comment, one entry per line.
    pub doc: &'static [&'static str],
    /// Its name.
    pub name: &'static str,
    /// Its return type.
    pub ret: fn() -> String,
    /// Its parameters: name and type.
    pub params: &'static [Param],
}

/// One struct shared with C.
#[derive(Debug)]
pub struct Struct {
    /// Its doc comment.
    pub doc: &'static [&'static str],
    /// Its C tag (`luo_status` for `struct luo_status`).
    pub tag: &'static str,
    /// Its fields, in order.
    pub fields: &'static [Field],
}

/// One field of a [`Struct`].
#[derive(Debug)]
pub struct Field {
    /// Its doc comment.
    pub doc: &'static [&'static str],
    /// Its name.
    pub name: &'static str,
    /// Its declaration (see [`CType::declare`]).
    pub declare: fn(&str) -> String,
}

/// One integer constant, a `#define` in C.
#[derive(Debug)]
pub struct Constant {
    /// Its doc comment.
    pub doc: &'static [&'static str],
    /// Its name.
    pub name: &'static str,
    /// Its value.
    pub value: u64,
}

/// A struct C sees only through pointers.
#[derive(Debug)]
pub struct Opaque {
    /// Its doc comment.
    pub doc: &'static [&'static str],
    /// Its C tag.
    pub tag: &'static str,
}

/// A function pointer type, a `typedef` in C.
#[derive(Debug)]
pub struct Typedef {
    /// Its doc comment.
    pub doc: &'static [&'static str],
    /// Its name.
    pub name: &'static str,
    /// What the function returns.
    pub ret: fn() -> String,
    /// Its parameters.
    pub params: &'static [Param],
}

/// One part of the header, under a heading.
#[derive(Debug)]
pub struct Section {
    /// The heading.
    pub title: &'static str,
    /// Constants.
    pub constants: &'static [Constant],
    /// Structs.
    pub structs: &'static [Struct],
    /// Function pointer types.
    pub typedefs: &'static [Typedef],
    /// Functions.
    pub functions: &'static [Function],
}

impl Section {
    /// A section with nothing in it yet.
    pub const EMPTY: Section = Section {
        title: "",
        constants: &[],
        structs: &[],
        typedefs: &[],
        functions: &[],
    };
}

/// Defines `extern "C"` functions and records them for the header in the const `$list`.
///
/// Each function is written as usual; its body runs as written (the macro adds
/// `#[unsafe(no_mangle)]` and nothing else).
#[macro_export]
#[doc(hidden)]
macro_rules! c_functions {
    ($list:ident; $(
        $(#[doc = $doc:literal])*
        pub unsafe extern "C" fn $name:ident($($arg:ident: $ty:ty),* $(,)?)
            $(-> $ret:ty)? $body:block
    )*) => {
        $(
            $(#[doc = $doc])*
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $ret)? $body
        )*

        /// The functions above, for the header.
        pub(crate) const $list: &[$crate::header::Function] = &[$($crate::header::Function {
            doc: &[$($doc),*],
            name: stringify!($name),
            ret: $crate::c_functions!(@ret $($ret)?),
            params: &[$((stringify!($arg), <$ty as $crate::header::CType>::c_type)),*],
        }),*];
    };
    (@ret) => { <() as $crate::header::CType>::c_type };
    (@ret $ret:ty) => { <$ret as $crate::header::CType>::c_type };
}

/// Defines `#[repr(C)]` structs, gives each its C tag, and records them in the const `$list`.
#[macro_export]
#[doc(hidden)]
macro_rules! c_structs {
    ($list:ident; $(
        $(#[doc = $doc:literal])*
        pub struct $name:ident as $tag:literal {
            $(
                $(#[doc = $fdoc:literal])*
                pub $field:ident: $fty:ty,
            )*
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug)]
            pub struct $name {
                $($(#[doc = $fdoc])* pub $field: $fty,)*
            }

            impl $crate::header::CType for $name {
                fn c_type() -> String {
                    concat!("struct ", $tag).to_owned()
                }
            }
        )*

        /// The structs above, for the header.
        pub(crate) const $list: &[$crate::header::Struct] = &[$($crate::header::Struct {
            doc: &[$($doc),*],
            tag: $tag,
            fields: &[$($crate::header::Field {
                doc: &[$($fdoc),*],
                name: stringify!($field),
                declare: <$fty as $crate::header::CType>::declare,
            }),*],
        }),*];
    };
}

/// Defines integer constants and records them in the const `$list`.
#[macro_export]
#[doc(hidden)]
macro_rules! c_constants {
    ($list:ident; $(
        $(#[doc = $doc:literal])*
        pub const $name:ident: $ty:ty = $value:expr;
    )*) => {
        $($(#[doc = $doc])* pub const $name: $ty = $value;)*

        /// The constants above, for the header.
        pub(crate) const $list: &[$crate::header::Constant] = &[$($crate::header::Constant {
            doc: &[$($doc),*],
            name: stringify!($name),
            value: $name as u64,
        }),*];
    };
}

/// What comes before the sections: the guard, the includes, the conventions every function
/// follows.
const PREAMBLE: &str = "\
/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * luo.h: libluo, the C library of luod, the Live Update Orchestrator in userspace.
 *
 * Generated from crates/luo-capi by `cargo run -p luo-capi --example luo-h`; do not edit.
 * docs/c-library.md is the guide: building, installing, linking and a workload update.
 *
 * Conventions, for every function below:
 *
 * - Errors: a function that returns int returns 0 (or a count, where it says so) on
 *   success and a negative errno on failure (-EINVAL, -ENOENT, ...): the errno luod, or the
 *   kernel for the same operation on /dev/liveupdate, gives. luo_last_error() then describes
 *   the failure. errno itself is not set. A failed call changes nothing: no session, file or
 *   descriptor is lost or half-made.
 * - Pointers: a NULL pointer where an object is expected is -EINVAL, checked before anything
 *   is sent. An output pointer (`out`, `fd_out`) is written only on success, except that
 *   `*out` is set to NULL on failure.
 * - Descriptors: the library never closes or changes a descriptor it is given; every
 *   descriptor it returns is close-on-exec and belongs to the caller.
 * - Threads: every handle may be used from any thread; calls on one handle are serialized,
 *   calls on different handles run in parallel. A handle must not be closed while another
 *   thread still uses it. The library is not async-signal-safe.
 * - Panics: none crosses this interface; an internal error would be -EIO with a message.
 */
#ifndef LUO_H
#define LUO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern \"C\" {
#endif
";

const POSTAMBLE: &str = "
#ifdef __cplusplus
}
#endif

#endif /* LUO_H */
";

/// Appends `doc` as a C comment indented by `indent`: `/** text */` for one short line.
fn comment(out: &mut String, doc: &[&str], indent: &str) {
    // `/// text` arrives as " text".
    let lines: Vec<&str> = doc
        .iter()
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    match lines.as_slice() {
        [] => return,
        [one] if indent.len() + one.len() + 7 <= 100 => {
            let _ = writeln!(out, "{indent}/** {one} */");
            return;
        }
        _ => {}
    }
    let _ = writeln!(out, "{indent}/**");
    let mut after_heading = false;
    for line in lines {
        // A Markdown heading (`# Safety`) becomes "Safety:", without the blank line after it.
        if after_heading && line.is_empty() {
            after_heading = false;
            continue;
        }
        after_heading = false;
        let line = match line.strip_prefix("# ") {
            Some(heading) => {
                after_heading = true;
                format!("{heading}:")
            }
            None => line.to_owned(),
        };
        if line.is_empty() {
            let _ = writeln!(out, "{indent} *");
        } else {
            let _ = writeln!(out, "{indent} * {line}");
        }
    }
    let _ = writeln!(out, "{indent} */");
}

fn params(params: &[Param]) -> String {
    if params.is_empty() {
        return "void".to_owned();
    }
    params
        .iter()
        .map(|(name, ty)| join(&ty(), name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The header: the handles `opaque` first (every function may name them), then `sections`.
pub fn render(opaque: &[Opaque], sections: &[Section]) -> String {
    let mut out = String::from(PREAMBLE);
    out.push_str("\n/* ---- handles ---- */\n");
    for o in opaque {
        out.push('\n');
        comment(&mut out, o.doc, "");
        let _ = writeln!(out, "struct {};", o.tag);
    }
    for s in sections {
        let _ = write!(out, "\n/* ---- {} ---- */\n", s.title);
        for c in s.constants {
            out.push('\n');
            comment(&mut out, c.doc, "");
            let _ = writeln!(out, "#define {} {}", c.name, c.value);
        }
        for st in s.structs {
            out.push('\n');
            comment(&mut out, st.doc, "");
            let _ = writeln!(out, "struct {} {{", st.tag);
            for (i, f) in st.fields.iter().enumerate() {
                if i > 0 && f.doc.len() > 1 {
                    out.push('\n');
                }
                comment(&mut out, f.doc, "    ");
                let _ = writeln!(out, "    {};", (f.declare)(f.name));
            }
            out.push_str("};\n");
        }
        for t in s.typedefs {
            out.push('\n');
            comment(&mut out, t.doc, "");
            let _ = writeln!(
                out,
                "typedef {} (*{})({});",
                (t.ret)(),
                t.name,
                params(t.params)
            );
        }
        for f in s.functions {
            out.push('\n');
            comment(&mut out, f.doc, "");
            let _ = writeln!(out, "{}({});", join(&(f.ret)(), f.name), params(f.params));
        }
    }
    out.push_str(POSTAMBLE);
    out
}

/// `include/luo.h`, as the code defines it.
pub fn generate() -> String {
    render(&crate::OPAQUE, &crate::SECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_spellings() {
        assert_eq!(<*const c_char>::c_type(), "const char *");
        assert_eq!(<*const *const c_char>::c_type(), "const char *const *");
        assert_eq!(<*mut *mut c_void>::c_type(), "void **");
        assert_eq!(<*mut c_int>::declare("fd_out"), "int *fd_out");
        assert_eq!(<[c_char; 32]>::declare("version"), "char version[32]");
        assert_eq!(<u64>::declare("token"), "uint64_t token");
    }
}
