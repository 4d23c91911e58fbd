; Definitions: the whole node as @definition.<kind>, its name as @name.
(class_definition name: (identifier) @name) @definition.class
(function_definition name: (identifier) @name) @definition.function
(module (expression_statement (assignment left: (identifier) @name)) @definition.variable)
(class_definition
  body: (block (expression_statement (assignment left: (identifier) @name)) @definition.field))

; Imports: decoded by lsp/imports.py.
(import_statement) @import
(import_from_statement) @import

; References.
(attribute object: (_) @reference.qualifier attribute: (identifier) @reference.member)
(call function: (identifier) @reference.call)
(identifier) @reference
