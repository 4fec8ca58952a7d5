"""The doors: the command line, the web page, the HTTP API and the page's jobs. They parse
input, call the library and show the result; nothing imports a door."""
