//! How shared types are declared, and the version of the pinned layout.
//!
//! Every map key and value is declared with [`shared_type!`]: `#[repr(C)]`,
//! a size and alignment that cannot change unnoticed, and a proof that its
//! fields cover every byte (explicit padding fields, no implicit padding),
//! which is what makes the `aya::Pod` impl beside it sound.

/// Version of the layout of everything pinned under `agent.bpffs`: maps,
/// their key and value types, and the meaning of their indexes (such as
/// `PacketReason`). Any change to them needs a new version, so that an agent
/// never adopts pins it would misread; the layout test in nva-userspace
/// fails until the version and its recorded layout are updated together.
pub const LAYOUT_VERSION: &str = "v13";

/// Declares a `#[repr(C)]` map key or value shared by the program and
/// userspace, asserts its size and alignment at compile time, asserts that
/// the sizes of its fields add up to its size (so it has no implicit
/// padding), and, with the `user` feature, implements `aya::Pod` for it.
macro_rules! shared_type {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $field_ty:ty ),* $(,)?
        }
        size = $size:expr, align = $align:expr;
    ) => {
        $(#[$meta])*
        #[repr(C)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field : $field_ty ),*
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        const _: () = assert!(core::mem::align_of::<$name>() == $align);
        const _: () = assert!(
            0 $(+ core::mem::size_of::<$field_ty>())* == core::mem::size_of::<$name>(),
            "implicit padding: name every padding byte as a field"
        );
        // SAFETY: the type is #[repr(C)] and Copy (every shared type derives
        // it), its fields are integers, arrays of integers or other shared
        // types, and the assertion above proves they cover all of its bytes:
        // any bit pattern is a valid value and none is uninitialised.
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $name {}
    };
}
