"""Development tools (`make bench`, the browser harness): not part of the library, never imported by samkit."""
