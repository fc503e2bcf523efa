"""The GraphQL transport (the primary API), mounted at ``/graphql``.

Translation only, like ``app.rest``: resolvers parse arguments, call one service function in a
worker thread and shape the result; authorization and validation stay in ``app.services``.
"""
