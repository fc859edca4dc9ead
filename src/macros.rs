//! Macros the layers share.

/// The inner-service accessors every middleware service has (`get_ref`, `get_mut`,
/// `into_inner`), for a service whose inner service is the field `inner` of type `S`, as
/// tower-http spells them.
#[allow(unused_macros)] // with no middleware feature on, nothing uses it
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes this service, returning the inner one.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// Builder setters that store their argument in a field, as plain-noun methods taking and
/// returning `self`. Each entry is the setter's docs, its signature and where the argument
/// goes: a field path under `self`, `Some(path)` for an optional setting the setter turns
/// on, or `into path` for an `impl Into<T>` argument. Written once, so a builder reads as the
/// list of its settings and what each means; setters that check or combine their input are
/// written out by hand.
#[allow(unused_macros)] // with few features on, no builder may use it
macro_rules! setters {
    () => {};
    (
        $(#[$attr:meta])*
        fn $name:ident($arg:ident: $ty:ty) => Some($($field:ident).+);
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$($field).+ = Some($arg);
            self
        }
        setters!($($rest)*);
    };
    (
        $(#[$attr:meta])*
        fn $name:ident($arg:ident: $ty:ty) => into $($field:ident).+;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$($field).+ = $arg.into();
            self
        }
        setters!($($rest)*);
    };
    (
        $(#[$attr:meta])*
        fn $name:ident($arg:ident: $ty:ty) => $($field:ident).+;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.$($field).+ = $arg;
            self
        }
        setters!($($rest)*);
    };
}
