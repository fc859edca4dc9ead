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

/// Builder setters that store their argument, as plain-noun methods taking and returning
/// `self`. Each entry is the setter's docs, its signature, and what it does with the argument
/// to a field path under `self`: `set` it, `some` (store `Some(arg)`: an optional setting the
/// setter turns on), `into` (convert an `impl Into<T>`), or `extend` (add a list's items,
/// converted with `Into`). Written once, so a builder reads as the list of its settings and
/// what each means; setters that check or combine their input are written out by hand.
#[allow(unused_macros)] // with few features on, no builder may use it
macro_rules! setters {
    () => {};
    (
        $(#[$attr:meta])*
        fn $name:ident($arg:ident: $ty:ty) => $how:ident $($field:ident).+;
        $($rest:tt)*
    ) => {
        $(#[$attr])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            setters!(@$how self.$($field).+, $arg);
            self
        }
        setters!($($rest)*);
    };
    (@set $place:expr, $arg:ident) => { $place = $arg };
    (@some $place:expr, $arg:ident) => { $place = Some($arg) };
    (@into $place:expr, $arg:ident) => { $place = $arg.into() };
    (@extend $place:expr, $arg:ident) => { $place.extend($arg.into_iter().map(Into::into)) };
}

/// `Debug` for a middleware service that shows its inner service; the settings it shares with
/// its layer are the layer's to show.
#[allow(unused_macros)] // with no middleware feature on, nothing uses it
macro_rules! inner_service_debug {
    ($service:ident<S $(, $param:ident)*>) => {
        impl<S: std::fmt::Debug $(, $param)*> std::fmt::Debug for $service<S $(, $param)*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($service))
                    .field("inner", &self.inner)
                    .finish_non_exhaustive()
            }
        }
    };
}
