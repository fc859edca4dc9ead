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
