"""The page's sections, one module each with its layout, its handlers and its texts' keys.

In the order of the page (``app.build_demo`` composes them):

- ``intro``: the language switch, the title, the privacy notice, the accordions, the diagram;
- ``keys``: Step 1, the session's keys and the limits line;
- ``inputs``: Step 2, the three parties' inputs, each encrypted and sent;
- ``fhe_run``: Step 3, the server's FHE run;
- ``decrypt``: Step 4, the encrypted verdict, decrypted;
- ``explain``: Step 5, the explanation;
- ``threeparty``: the three-party mode (three party processes, one button);
- ``switch``: the footer and the language switch's relabelling of the outputs shown.

Each module has ``layout(parts, ...)``, which adds its components to the page being built and
records them in ``parts`` (``base.Parts``) by name; ``wire(parts, steps)``, which connects its
events once every section is laid out; and, for the steps, a ``*Handlers`` class whose methods
are the page's step handlers (``app.PageSteps`` combines them). The texts are in
``page/locales/<lang>.json`` under the keys the layout gives to ``gr.I18n``.
"""
